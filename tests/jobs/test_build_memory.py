"""Peak host memory of building a model share on the meta device, measured against the estimate.

A subprocess builds an expert-parallel rank's share of a mid-sized MoE flavor (the path a run
takes: meta device, `to_empty` on the worker's device, init) and reports how much its peak RSS
grew. It must match `model.memory`'s weights + frozen towers for that rank (fp32 on CPU), and
stay well below what the whole model would take: one copy of the rank's own share, nothing more.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHAPE = {"dim": 512, "n_layers": 8, "n_heads": 8, "n_kv_heads": 4, "ffn_dim": 1024, "vocab_size": 32000,
         "num_experts": 8, "top_k": 2, "moe_ffn_dim": 1024}  # fmt: skip

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from tests.jobs._tiny import run_model
    from sphinxx.jobs.context import Worker
    from sphinxx.schema.run import load_config
    from sphinxx.jobs.run_memory import run_memory, setup_from_run

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    shape = json.loads(sys.argv[1])
    cfg = load_config(preset="debug-moe", data={"model": {"overrides": shape}},
                      overrides=["storage.uri=file:///tmp/unused", "run_id=mem", "parallel.ep_size=2",
                                 "parallel.min_workers=2", "parallel.max_workers=2", "data.seq_len=64"])
    whole = run_memory(load_config(preset="debug-moe", data={"model": {"overrides": shape}},
                                   overrides=["storage.uri=file:///tmp/unused", "run_id=mem",
                                              "data.seq_len=64", "parallel.ep_size=1",
                                              "parallel.min_workers=1", "parallel.max_workers=1"]))
    estimate = run_memory(cfg, setup_from_run(cfg, world_size=2))
    torch.zeros(1)  # allocator and thread pools up before the baseline
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    before = status("VmRSS")
    model, _ = run_model(cfg, Worker(rank=1, world_size=2))
    held = sum(t.numel() * t.element_size() for t in model.parameters())
    print(json.dumps({"peak_growth": status("VmHWM") - before, "held": held,
                      "estimate": estimate["bytes"]["weights"] + estimate["bytes"]["frozen_towers"],
                      "whole": whole["bytes"]["weights"] + whole["bytes"]["frozen_towers"]}))
    """
)


def test_building_a_rank_share_peaks_at_about_one_copy_of_it() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(SHAPE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"rank share: estimate {got['estimate'] / 2**20:.1f} MiB, held {got['held'] / 2**20:.1f} MiB, "
          f"peak RSS growth {got['peak_growth'] / 2**20:.1f} MiB; "
          f"whole model {got['whole'] / 2**20:.1f} MiB")  # fmt: skip
    assert got["held"] == got["estimate"]  # the estimate counts exactly the tensors this rank holds
    assert got["estimate"] * 0.9 <= got["peak_growth"] <= got["estimate"] * 1.1 + 64 * 2**20
    assert got["peak_growth"] < 0.8 * got["whole"]  # never the whole model, even for a moment
