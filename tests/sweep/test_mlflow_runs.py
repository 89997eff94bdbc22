"""The MLflow side of a sweep on a local SQLite store: runs found by tag, artifacts beside the database."""

from __future__ import annotations

from pathlib import Path

import pytest

from sphinxx.schema.status import AxisLaw, Estimate, LeaveOneOut, ScalingLawStatus, TrackingState
from sphinxx.sweep import mlflow_runs


def test_a_local_store_keeps_its_artifacts_beside_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    launch = tmp_path / "launch"
    launch.mkdir()
    monkeypatch.chdir(launch)  # where a user happens to run the command
    uri = f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    (tmp_path / "work").mkdir()
    sweep = mlflow_runs.SweepRef("local", "demo", "uid-1")
    parent = mlflow_runs.ensure_parent_run(uri, "exp", sweep)
    assert mlflow_runs.ensure_parent_run(uri, "exp", sweep) == parent  # found by its uid tag
    law = ScalingLawStatus(form="per-axis", summary="L ~ N^-0.1", num_points=2)
    law.per_axis = [AxisLaw(axis="params", coefficient=3.0, slope=0.1, num_points=2)]
    law.estimates = [Estimate(name="params_slope", value=0.1, low=0.08, high=0.12)]
    law.loo = LeaveOneOut(rmse=0.01, max_abs=0.02, num_points=2)
    mlflow_runs.log_fit(uri, parent, law, b"\x89PNG fake")
    mlflow_runs.set_run_status(uri, parent, TrackingState.FINISHED)
    run = MlflowClient(uri).get_run(parent)
    assert run.info.status == "FINISHED" and run.data.tags[mlflow_runs.TAG_SCALING_LAW] == "L ~ N^-0.1"
    assert run.data.metrics["fit_num_points"] == 2.0
    # a per-axis law gets fit_* metrics too: its coefficients with their intervals and the LOO error
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("fit_params_slope")} == {
        "fit_params_slope": 0.1,
        "fit_params_slope_low": 0.08,
        "fit_params_slope_high": 0.12,
    }
    assert run.data.metrics["fit_loo_rmse"] == 0.01 and run.data.metrics["fit_loo_max_abs"] == 0.02
    artifacts = tmp_path / "work" / "mlartifacts"
    assert {p.name for p in artifacts.rglob("*") if p.is_file()} == {"scaling_law.json", "scaling_law.png"}
    assert not any(launch.iterdir())  # no ./mlruns
    assert mlflow_runs.artifact_location("http://mlflow:5000") is None  # a server decides for itself
