"""bench/checkpoint.py at its smallest setting, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow  # its own moto server
def test_the_checkpoint_benchmark_runs_and_reports_the_stall_ratio() -> None:
    root = Path(__file__).resolve().parents[3]
    argv = [sys.executable, str(root / "bench" / "checkpoint.py"), "--size-mib", "16", "--saves", "1"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    saves, (summary,) = [r for r in rows if "mode" in r], [r for r in rows if r.get("summary")]
    assert sorted(r["mode"] for r in saves) == ["async", "sync"]
    assert all(r["bench"] == "checkpoint" and r["commit_s"] >= r["stall_s"] > 0 for r in saves)
    assert summary["stall_ratio"] == pytest.approx(
        summary["async_stall_s"] / summary["sync_stall_s"], abs=1e-4
    )
    assert summary["goal_met"] == (summary["stall_ratio"] <= 0.1)
    assert summary["peak_rss_gib"] > 0 and summary["peak_extra_host_gib_async"] >= 0
