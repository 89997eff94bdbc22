"""bench/moe.py's roofline: it does exactly the layer's expert FLOPs, and the bench's smallest setting runs.

The roofline is the goal's yardstick (docs/moe.md, "The grouped kernel on CPU and its roofline"), so its FLOPs
are checked against torch's own FLOP counter on the reference (`loop`) layer, and the smallest
bench setting (256 tokens at the default width) runs in seconds and reports every kernel's ratio.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from sphinxx.model.moe import MoE, MoEArgs

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _bench(monkeypatch):
    # Appended, not prepended: bench/ holds operator.py, data.py, ... that must not shadow anything.
    monkeypatch.setattr(sys, "path", [*sys.path, str(BENCH)])
    spec = importlib.util.spec_from_file_location("bench_moe", BENCH / "moe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_roofline_does_the_expert_flops_of_one_layer_call(monkeypatch) -> None:
    bench = _bench(monkeypatch)
    dim, ffn_dim, experts, top_k, tokens = 32, 64, 8, 2, 24
    layer = MoE(MoEArgs(dim, ffn_dim, num_experts=experts, top_k=top_k, kernel="loop"))
    x = torch.randn(1, tokens, dim, requires_grad=True)
    with FlopCounterMode(display=False) as layer_flops:
        y, aux = layer(x)
        (y.sum() + aux).backward()
    router = 3 * 2 * tokens * dim * experts  # the router's GEMM forward, dx and dW: left out of the roofline
    gemms = bench.roofline_gemms(tokens * top_k, dim, ffn_dim, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as roof_flops:
        gemms()
    assert roof_flops.get_total_flops() == layer_flops.get_total_flops() - router
    assert roof_flops.get_total_flops() == 18 * tokens * top_k * dim * ffn_dim
    # expert-gemms: the same FLOPs, as one GEMM per expert on the rows the layer routes to it
    per_expert = bench.expert_gemms(layer, x.detach(), torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as expert_flops:
        per_expert()
    assert expert_flops.get_total_flops() == roof_flops.get_total_flops()
    assert len(bench._routed_segments(layer, x.detach())) > 1  # really one GEMM set per expert


def test_smallest_setting_reports_every_kernel_against_the_roofline(monkeypatch, capsys) -> None:
    bench = _bench(monkeypatch)
    argv = ["moe.py", "--tokens", "256", "--rounds", "2", "--iters", "1", "--threads", "1", "--clock", "cpu",
            "--with-torch-grouped-mm"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    threads = torch.get_num_threads()
    try:
        bench.main()
    finally:
        torch.set_num_threads(threads)  # the bench sets it process-wide
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    timed = {r["impl"]: r for r in rows if r["impl"] != "ratio"}
    impls = ["roofline", "expert-gemms", "expert-elementwise", "routing", "transformers-eager",
             "transformers-grouped_mm", "ours-grouped", "ours-loop", "ours-grouped_torch_mm"]  # fmt: skip
    assert list(timed) == impls
    assert all(
        r["clock"] == "cpu" and r["threads"] == 1 and r["tokens"] == 256 and len(r["per_round_ms"]) == 2
        and r["page_faults_per_call"] >= 0
        for r in timed.values()
    )  # fmt: skip
    assert timed["roofline"]["expert_gflop"] == round(18 * 256 * 2 * 256 * 512 / 1e9, 4)
    for name in impls[5:]:  # same weights and tokens: every kernel computes transformers' output
        assert timed[name]["max_abs_diff_vs_transformers"] < 1e-5, name
    # the elementwise work is a small part of the GEMMs' time, as it must be for the ceiling to mean anything
    assert timed["expert-elementwise"]["fwd_bwd_ms"] < timed["expert-gemms"]["fwd_bwd_ms"]
    (ratio,) = [r for r in rows if r["impl"] == "ratio"]
    keys = ["expert_gemms", "expert_elementwise", "routing", "expert_gemms_and_elementwise",
            "expert_gemms_elementwise_and_routing", "transformers_eager", "transformers_grouped_mm",
            "grouped", "loop", "grouped_torch_mm"]  # fmt: skip
    for key in keys:
        lo, hi = ratio[f"{key}_of_roofline_p25_p75"]
        assert 0 < lo <= ratio[f"{key}_of_roofline"] <= hi, key
        assert ratio[f"{key}_of_roofline_of_minima"] > 0
    ceilings = [ratio[f"{k}_of_roofline"] for k in keys[:5] if k.startswith("expert_gemms")]
    assert ceilings == sorted(ceilings, reverse=True)  # each part added lowers the ceiling
    assert {f"transformers_over_{k}" for k in ("grouped_mm", "grouped", "loop", "grouped_torch_mm")} <= set(
        ratio
    )
    assert {f"{k}_of_expert_gemms" for k in ("grouped", "loop", "grouped_torch_mm")} <= set(ratio)


def test_docs_quote_the_roofline_run() -> None:
    """docs/moe.md's figures for the grouped kernel and the ceilings are those of the result file it cites,
    and whether it says the goal is met follows from them."""
    results = Path(__file__).resolve().parents[2] / "bench" / "results" / "moe_cpu_roofline.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines() if line]
    ratio = {r["tokens"]: r for r in rows if r["impl"] == "ratio"}
    text = " ".join((Path(__file__).resolve().parents[2] / "docs" / "moe.md").read_text().split())
    met = {t: ratio[t]["grouped_of_roofline"] >= 0.9 for t in (1024, 4096)}
    assert met == {1024: False, 4096: True}, "docs/moe.md's wording assumes this outcome: rewrite it"
    quoted = re.search(
        r"met at 4,096 tokens, not at 1,024: ([\d.]+) at 4,096 and ([\d.]+) at 1,024 tokens "
        r"\(([\d.]+)x and ([\d.]+)x transformers'",
        text,
    )
    assert quoted, "docs/moe.md no longer states the roofline result"
    expected = (
        f"{ratio[4096]['grouped_of_roofline']:.2f}",
        f"{ratio[1024]['grouped_of_roofline']:.2f}",
        f"{ratio[4096]['transformers_over_grouped']:.2f}",
        f"{ratio[1024]['transformers_over_grouped']:.2f}",
    )
    assert quoted.groups() == expected
    table = {
        "ours `grouped` (segment kernel)": "grouped",
        "ceiling: expert GEMMs alone": "expert_gemms",
        "ceiling: expert GEMMs + elementwise": "expert_gemms_and_elementwise",
        "ceiling: expert GEMMs + elementwise + routing": "expert_gemms_elementwise_and_routing",
    }
    for label, key in table.items():
        row = re.search(rf"\| {re.escape(label)} \| ([\d.]+) \([^)]*\) \| ([\d.]+) \(", text)
        assert row and row.groups() == tuple(f"{ratio[t][f'{key}_of_roofline']:.3f}" for t in (1024, 4096)), (
            label
        )
    shares = re.search(r"costs ([\d.]+)% of the roofline's time and the routing ([\d.]+)%", text)
    assert shares and shares.groups() == tuple(
        f"{100 / ratio[1024][f'{key}_of_roofline']:.1f}" for key in ("expert_elementwise", "routing")
    )


def test_malloc_keep_runs_and_is_recorded() -> None:
    """``--malloc-keep`` changes glibc's malloc for the whole process, so it runs in a child process."""
    argv = [sys.executable, str(BENCH / "moe.py"), "--dim", "32", "--ffn-dim", "64", "--tokens", "32",
            "--rounds", "1", "--iters", "1", "--threads", "1", "--clock", "cpu", "--malloc-keep"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert rows and all(r["malloc_keep"] is True for r in rows)
    assert rows[-1]["impl"] == "ratio" and rows[-1]["grouped_of_roofline"] > 0
