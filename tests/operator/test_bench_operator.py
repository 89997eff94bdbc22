"""bench/operator.py's smallest setting, with --mlflow, so the bench cannot rot between runs.

4 points (4 models x 1 data fraction), each mode against a fresh emulator and operator process,
the MLflow mode against the session's MLflow server (PostgreSQL-backed): both modes' lines, the
ratios against the baseline, and the protocol's invariants the bench checks (one parent run, one
child run per point, each point's run id in its status).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_operator_bench_smallest_setting_with_mlflow(mlflow_server) -> None:
    argv = [sys.executable, str(ROOT / "bench" / "operator.py"), "--fractions", "1", "--quiet-window", "1",
            "--repeats", "1", "--timeout", "300", "--mlflow", "--tracking-uri", mlflow_server.tracking_uri,
            "--mlflow-log", str(mlflow_server.process.log_path)]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    by = {(line.get("mode"), line["metric"]): line for line in lines}
    for mode in ("baseline", "mlflow"):
        for metric in ("rayjobs_created", "status_patches", "operator_peak_rss", "api_requests_per_point"):
            assert by[(mode, metric)]["points"] == 4 and by[(mode, metric)]["value"] > 0, (mode, metric)
    runs = by[("mlflow", "mlflow_runs")]
    assert (runs["parents"], runs["children"], runs["distinct_points"]) == (1, 4, 4)
    assert by[("mlflow", "mlflow_runs_in_status")]["value"] >= 0
    calls = by[("mlflow", "mlflow_requests")]["by_endpoint"]
    assert calls.get("POST runs/create") == 5  # the parent and one per point, nothing twice
    for metric in ("rayjobs_created", "operator_peak_rss", "status_patches"):
        ratio = by[("ratio", f"{metric}_ratio")]
        assert ratio["baseline"] == "no MLflow"
        assert ratio["value"] == pytest.approx(ratio["mlflow"] / ratio["no_mlflow"], rel=1e-2)
