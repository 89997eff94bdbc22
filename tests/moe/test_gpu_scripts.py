"""The GPU bench scripts' CPU smoke modes, so the scripts cannot rot between GPU runs.

Each script must print JSON lines only (stdout), name the device in its first line, and finish with
a passing summary on tiny CPU shapes (MegaBlocks rows skipped with the reason). bench/moe.py (the
CPU benchmark) runs on a tiny shape too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
BIN = Path(sys.executable).parent


def _load(monkeypatch, name: str):
    # Appended, not prepended: bench/ holds operator.py, data.py, ... that must not shadow anything.
    monkeypatch.setattr(sys, "path", [*sys.path, str(BENCH)])
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every stdout line is one JSON object


def test_gpu_moe_local_cpu_smoke(monkeypatch, capsys) -> None:
    script = _load(monkeypatch, "gpu_moe_local")
    assert script.main(["--device", "cpu"]) == 0
    rows = _json_lines(capsys.readouterr().out)
    assert rows[0]["kind"] == "env" and rows[0]["device"] == "cpu"
    parity = [r for r in rows if r["kind"] == "parity" and "skipped" not in r]
    # grouped and loop, EP 1/2/4/8, four load patterns; the rank with nothing and empty experts included.
    assert {(r["impl"], r["ep_size"], r["pattern"]) for r in parity} == {
        (k, ep, p) for k in ("grouped", "loop") for ep in (1, 2, 4, 8) for p in script.PATTERNS
    }
    assert all(r["ok"] and r["finite"] and r["empty_grads_zero"] for r in parity)
    assert any(r["empty_experts"] for r in parity if r["pattern"] == "skewed")
    skipped = {r["impl"] for r in rows if r["kind"] == "parity" and "skipped" in r}
    assert skipped == {"megablocks", "megablocks-frozen-x"}  # no CUDA here: said, not hidden
    timing = {r["impl"] for r in rows if r["kind"] == "timing"}
    assert timing == {"transformers-eager", "ours-grouped"}
    summary = rows[-1]
    assert summary["kind"] == "summary" and summary["parity_ok"] and summary["device"] == "cpu"
    assert len(summary["speedup_over_transformers_eager_per_round"]) == 2  # interleaved rounds


def test_gpu_moe_cpu_smoke(monkeypatch, capsys) -> None:
    script = _load(monkeypatch, "gpu_moe")
    argv = [
        "--device",
        "cpu",
        "--tokens",
        "64",
        "--dim",
        "64",
        "--ffn-dim",
        "128",
        "--iters",
        "1",
        "--warmup",
        "1",
    ]
    assert script.main(argv) == 0
    rows = _json_lines(capsys.readouterr().out)
    assert rows[0]["kind"] == "env" and rows[0]["device"] == "cpu"
    assert rows[-1]["kind"] == "summary" and rows[-1]["parity_ok"] and rows[-1]["device"] == "cpu"
    assert {r["impl"] for r in rows if r["kind"] == "parity" and "skipped" in r} == {
        "ours-megablocks",
        "ours-megablocks-dmoe",
    }


def test_gpu_moe_ep_cpu_smoke_under_torchrun(tmp_path) -> None:
    """Two gloo processes under torchrun, as the multi-GPU machine runs it with NCCL."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        str(BIN / "torchrun"),
        "--standalone",
        "--nproc-per-node",
        "2",
        str(BENCH / "gpu_moe_ep.py"),
        "--device",
        "cpu",
    ]
    # cwd outside the repo: its operator/ folder must never shadow the standard library's operator.
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _json_lines(done.stdout)
    assert rows[0]["kind"] == "env" and rows[0]["device"] == "cpu" and rows[0]["world"] == 2
    parity = [r for r in rows if r["kind"] == "parity"]
    assert [(r["ep_size"], r["routing"]) for r in parity] == [(2, "random"), (2, "skewed")]
    assert all(r["ok"] for r in parity)
    assert parity[1]["rows_computed_per_rank"][1] == 0  # skewed: EP rank 1 received nothing
    assert {r["config"] for r in rows if r["kind"] == "timing"} == {"ep1", "ep2"}
    assert rows[-1] == {**rows[-1], "kind": "summary", "parity_ok": True}


@pytest.mark.slow
def test_gpu_checks_wrapper_cpu_smoke(tmp_path) -> None:
    """The one command of bench/GPU.md, with DEVICE=cpu: setup skipped, both checks on tiny shapes."""
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(BENCH / "gpu_checks.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:]
    for name in ("gpu_moe_local", "gpu_moe"):
        rows = _json_lines((tmp_path / f"{name}.jsonl").read_text())
        assert rows[-1]["kind"] == "summary" and rows[-1]["parity_ok"], name


def test_cpu_bench_interleaves_and_reports_ratios(monkeypatch, capsys) -> None:
    script = _load(monkeypatch, "moe")
    monkeypatch.setattr(sys, "argv", ["moe.py", "--dim", "32", "--ffn-dim", "64", "--tokens", "16", "32",
                                      "--rounds", "2", "--iters", "1"])  # fmt: skip
    script.main()
    rows = _json_lines(capsys.readouterr().out)
    ratios = [r for r in rows if r["impl"] == "ratio"]
    assert [r["tokens"] for r in ratios] == [16, 32]
    assert all(len(r["per_round_ms"]) == 2 for r in rows if r["impl"] != "ratio" and "per_round_ms" in r)
    assert all("transformers_over_grouped" in r for r in ratios)
