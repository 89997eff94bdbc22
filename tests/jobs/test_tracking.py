"""The MLflow tracker against a real `mlflow server`: run identity, buffering through an outage."""

from __future__ import annotations

import threading
import time

import pytest

from sphinxx.jobs.tracking import MLflowTracker, NullTracker, create_run, resolve_run_id


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def test_run_id_resolution_order(mlflow_server, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = mlflow_server.tracking_uri
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    assert resolve_run_id(uri, "e", "r", configured="cfg", recorded="rec") == ("cfg", False)
    assert resolve_run_id(uri, "e", "r", configured=None, recorded="rec") == ("rec", False)
    monkeypatch.setenv("MLFLOW_RUN_ID", "env")  # not read: the run id travels in the config
    assert resolve_run_id(uri, "e", "r", configured="cfg", recorded="rec") == ("cfg", False)
    monkeypatch.delenv("MLFLOW_RUN_ID")
    run_id, created = resolve_run_id(uri, "resolve-test", "r", None, None, tags={"k": "v"})
    assert created
    from mlflow import MlflowClient

    run = MlflowClient(uri).get_run(run_id)
    assert run.data.tags["k"] == "v" and run.info.run_name == "r"


def test_tracker_logs_params_metrics_tags_and_skips_restored_steps(mlflow_server) -> None:
    uri = mlflow_server.tracking_uri
    run_id = create_run(uri, "tracker-test", "t")
    tracker = MLflowTracker(uri, run_id)
    tracker.log_params({"train.lr": 0.001, "model.flavor": "debug"})
    tracker.set_tags({"flavor": "debug"})
    tracker.log_text("a: 1\n", "config.yaml")
    for step in range(1, 6):
        tracker.log_metrics({"loss": 10.0 - step, "lr": 0.1}, step)
    tracker.skip_through(3)  # as after a resume from step 3: steps 1..3 are not logged again
    for step in range(1, 8):
        tracker.log_metrics({"loss": 100.0 + step}, step)
    # A second attempt logs the same params again, one of them changed: kept, not an error.
    tracker.log_params({"train.lr": 0.002, "train.steps": 7})
    assert tracker.close(timeout=60)

    from mlflow import MlflowClient

    run = MlflowClient(uri).get_run(run_id)
    assert run.data.params == {"train.lr": "0.001", "model.flavor": "debug", "train.steps": "7"}
    assert run.data.tags["flavor"] == "debug"
    hist = _history(uri, run_id, "loss")
    assert [s for s, _ in hist] == [1, 2, 3, 4, 4, 5, 5, 6, 7]
    assert (6, 106.0) in hist and (3, 7.0) in hist


def test_null_tracker_is_silent() -> None:
    tracker = NullTracker()
    tracker.log_metrics({"loss": 1.0}, 1)
    assert tracker.flush() and tracker.close() and tracker.run_id is None


@pytest.mark.slow
def test_outage_buffers_replays_and_creates_late_run(mlflow_server) -> None:
    """One server restart (PostgreSQL-backed, as in production) covers the outage cases: a run that
    logs through it, a run created after it, and several points logging at once from their own
    threads, as the points of a sweep do against one server (a restart costs ~10-60 s)."""
    uri = mlflow_server.tracking_uri
    run_id = create_run(uri, "outage-test", "o")
    tracker = MLflowTracker(uri, run_id, retry_max_s=1.0)
    tracker.log_metrics({"loss": 1.0}, 1)
    assert tracker.flush(30)
    points = [MLflowTracker(uri, create_run(uri, "outage-test", f"p{i}"), retry_max_s=1.0) for i in range(3)]

    def log_points() -> None:
        for step in range(1, 41):
            for i, point in enumerate(points):
                point.log_metrics({"loss": step + i / 10}, step)
            time.sleep(0.05)

    writer = threading.Thread(target=log_points)
    writer.start()
    recorded: list[str] = []
    mlflow_server.process.stop()
    try:
        # A run that starts while MLflow is down: created once it answers, its id recorded.
        late = MLflowTracker(uri, None, experiment="late-run", run_name="late", on_created=recorded.append)
        late.log_params({"a": 1})
        late.log_metrics({"loss": 2.0}, 1)
        for step in range(2, 12):
            tracker.log_metrics({"loss": float(step)}, step)  # never blocks the caller
        deadline = time.monotonic() + 30
        while tracker.down_since is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert tracker.down_since is not None
        assert not tracker.flush(timeout=1)
        assert late.run_id is None
    finally:
        mlflow_server.restart()
    writer.join(60)
    assert all(point.close(timeout=90) for point in points)
    assert all(point.outages == 1 for point in points)  # each met the outage and came through it
    for i, point in enumerate(points):  # every step of every point exactly once, in order
        assert _history(uri, point.run_id, "loss") == [(s, s + i / 10) for s in range(1, 41)]
    assert tracker.close(timeout=90) and late.close(timeout=90)
    assert tracker.outages == 1 and tracker.replayed >= 1
    assert [s for s, _ in _history(uri, run_id, "loss")] == list(range(1, 12))
    assert recorded == [late.run_id]
    assert _history(uri, late.run_id, "loss") == [(1, 2.0)]


def test_tracking_switched_off_needs_no_mlflow(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tracking.enabled: false`: rank 0 gets the no-op tracker and the driver makes no run, with
    MLflow not importable at all (as on a GPU machine without it)."""
    import sys

    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.driver import prepare_run
    from sphinxx.jobs.tracking import open_tracker
    from sphinxx.schema.run import load_config

    monkeypatch.setitem(sys.modules, "mlflow", None)  # any import of mlflow now raises
    storage = f"storage.uri={tmp_path.as_uri()}"
    assert load_config(preset="debug", overrides=[storage]).tracking.enabled  # on by default
    cfg = load_config(preset="debug", overrides=[storage, "tracking.enabled=false"])
    assert isinstance(open_tracker(cfg.tracking, cfg.run_id, Worker(rank=0), None), NullTracker)
    prepared = prepare_run(cfg, 0, "test")
    assert prepared.mlflow_run_id is None and not prepared.owns_mlflow_run


def test_a_job_started_before_its_run_exists_takes_the_operators_run(mlflow_server, tmp_path) -> None:
    """`tracking.await_run_id` (the operator created the RayJob first): the driver creates no run
    and keeps the operator's stored config; rank 0 buffers its metrics until the operator writes
    the run id there, then logs them to that run, the experiment's only one."""
    from dataclasses import replace

    from mlflow import MlflowClient

    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.driver import prepare_run
    from sphinxx.jobs.stores import run_store
    from sphinxx.jobs.tracking import open_tracker
    from sphinxx.schema.run import load_config, to_yaml

    uri = mlflow_server.tracking_uri
    overrides = [f"storage.uri={tmp_path.as_uri()}", f"tracking.uri={uri}", "tracking.experiment=await"]
    cfg = load_config(preset="debug", overrides=[*overrides, "tracking.await_run_id=true"])
    store = run_store(cfg.run_id, cfg.storage)
    store.write_run_config(to_yaml(cfg))  # as the operator writes it with the RayJob
    prepared = prepare_run(cfg, 1, "test")
    assert prepared.mlflow_run_id is None and not prepared.owns_mlflow_run
    assert store.read_run_config() == to_yaml(cfg)  # the file where the id will appear is left alone

    tracker = open_tracker(cfg.tracking, cfg.run_id, Worker(rank=0), store)
    tracker.log_metrics({"loss": 1.5}, 1)
    assert not tracker.flush(timeout=2)  # buffered: no run to log to yet, and none created
    client = MlflowClient(uri)
    assert client.get_experiment_by_name("await") is None

    named = create_run(uri, "await", cfg.run_id)  # the operator's pool creates the run ...
    store.write_run_config(to_yaml(replace(cfg, tracking=replace(cfg.tracking, mlflow_run_id=named))))
    assert tracker.flush(timeout=60) and tracker.close(timeout=10)  # ... and names it: replayed there
    assert _history(uri, named, "loss") == [(1, 1.5)]
    experiment = client.get_experiment_by_name("await").experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment])] == [named]
    # a later attempt (or a driver that starts after the operator wrote the id) continues it
    again = prepare_run(cfg, 2, "test")
    assert again.mlflow_run_id == named and not again.owns_mlflow_run
