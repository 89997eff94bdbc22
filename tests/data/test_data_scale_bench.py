"""bench/data_scale.py's smallest setting, so the bench cannot rot between runs.

20,000 records in the paper's 13 groups, half of them kept: every phase's line, each measured in
a fresh process, the goals' ratios, and a first batch read from the written shards without a bad
record.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_data_scale_bench_smallest_setting() -> None:
    argv = [sys.executable, str(ROOT / "bench" / "data_scale.py"), "--records", "20000", "--steps", "3",
            "--fractions", "0.5", "--heldout", "100", "--world-size", "4"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert lines[0]["event"] == "write" and lines[0]["sources"] == 13
    by = {
        (line.get("phase") or line["metric"], line["fraction"], line.get("order")): line for line in lines[1:]
    }
    for f in (0.5,):
        # 20,000 records minus 13 x 100 held out, halved by the fraction.
        assert abs(by[("mixture", f, None)]["samples_per_epoch"] - f * (20_000 - 13 * 100)) < 0.05 * 20_000
        memory = {order: by[("memory", f, order)] for order in ("materialised", "feistel")}
        assert 0 < memory["feistel"]["cache_bytes"] <= memory["feistel"]["traced_peak_bytes"]
        # The baseline holds a permutation of every source's kept records (8 bytes each) at least.
        assert memory["materialised"]["cache_bytes"] - memory["feistel"]["cache_bytes"] >= 8 * f * 18_000
        for order in ("materialised", "feistel"):
            sampling = by[("sampling", f, order)]
            assert sampling["warm_mean_ms"] > 0 and sampling["resume_ms"] > 0
        startup = by[("startup", f, None)]
        assert startup["samples"] == 4 and startup["bad"] == 0
        assert startup["seconds"] >= startup["build_data_s"] + startup["first_batch_s"]
    ratios = [line for line in lines if line.get("kind") == "ratio"]
    goals = [r for r in ratios if r["metric"] in ("memory_vs_goal", "startup_vs_goal")]
    assert len(goals) == 2 and all(0 < r["value"] < 1 for r in goals)  # far inside both goals here
    memory = [r for r in ratios if r["metric"] == "cache_bytes_feistel_vs_materialised"]
    assert len(memory) == 1 and all(r["baseline"] == "materialised" and 0 < r["value"] < 1 for r in memory)
    assert len(ratios) == 2 + 5
