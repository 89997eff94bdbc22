"""bench/operator.py --live at its smallest setting, so the live-status cost bench cannot rot.

4 running points, 1-2 s intervals: the numbers are not the bench's 1,000-point figures, but the
rules they show hold at any size and are checked here: reads are bounded by the running points
and the read interval, and an unchanged record costs no status write.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_live_bench_counts_bounded_reads_and_no_idle_writes() -> None:
    argv = [sys.executable, str(ROOT / "bench" / "operator.py"), "--live", "--fractions", "1",
            "--write-interval", "2", "--progress-interval", "2", "--run-interval", "1",
            "--live-window", "10", "--quiet-window", "6", "--timeout", "300",
            "--checkpoint-read-interval", "4"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    lines = {m["metric"]: m for m in map(json.loads, out.stdout.splitlines()) if m.get("bench") == "operator"}
    live, quiet = lines["live_s3_reads"], lines["quiet_s3_reads"]
    # At most one GET per running point per (interval - half a timer tick): 60 / 1.5 = 40 a minute.
    assert 0 < live["progress_gets_per_point"] <= 40 and quiet["progress_gets_per_point"] <= 40
    # Checkpoints of a running point: one listing (rollbacks, pointer, step folders: ~3-4 requests)
    # per (4 s - half a tick), not one per 1 s tick (~200 requests a minute here before).
    assert 0 < live["checkpoint_reads_per_point"] <= 90 and quiet["checkpoint_reads_per_point"] <= 90
    assert lines["live_status_patches"]["value"] > 0  # the records moved: status followed
    assert lines["quiet_status_patches"]["value"] == 0  # nothing changed: nothing written
    assert lines["status_progress_age_max"]["value"] < 60  # every point refreshed within a minute
    # Each point's status took a new record every ~2-3 s (read interval + a tick), as a watch saw.
    gaps = lines["status_refresh_gap_max"]
    assert gaps["seen"] == 4 and 0 < gaps["value"] < 10
    assert lines["progress_vs_checkpoint_reads"]["value"] > 0
