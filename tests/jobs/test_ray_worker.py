"""The Ray adapter: Ray's context + the driver's JobContext -> a Worker, the config used as is."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.jobs._tiny import tiny_run_config


def test_the_worker_gets_the_drivers_config_object_and_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.train

    from sphinxx.jobs import ray_worker
    from sphinxx.jobs.context import JobContext
    from sphinxx.schema import run

    cfg = tiny_run_config("debug", 0, 1, "file:///tmp/unused")
    ctx = SimpleNamespace(get_world_rank=lambda: 1, get_world_size=lambda: 2, get_local_rank=lambda: 0)
    monkeypatch.setattr(ray.train, "get_context", lambda: ctx)

    def no_parsing(*args, **kwargs):
        raise AssertionError("a worker must not parse the config again")

    monkeypatch.setattr(run, "load_config", no_parsing)
    monkeypatch.setattr(run, "from_dict", no_parsing)
    seen = {}
    monkeypatch.setattr(
        ray_worker, "train", lambda cfg, worker: seen.update(cfg=cfg, worker=worker) or {"step": 1}
    )
    job = JobContext(cfg, attempt=4, mlflow_run_id="run-9", code_version="v1")
    assert ray_worker.train_loop_per_worker({"job": job}) == {"step": 1}
    worker = seen["worker"]
    assert seen["cfg"] is cfg  # the very object the driver sent (here: no pickling in between)
    assert (worker.rank, worker.world_size, worker.local_rank, worker.device) == (1, 2, 0, "cpu")
    assert (worker.attempt, worker.mlflow_run_id, worker.code_version) == (4, "run-9", "v1")
    assert worker.report is ray_worker._ray_report


def test_pointer_checkpoint_names_are_new_for_every_commit() -> None:
    from sphinxx.jobs.loop import pointer_name

    names = {
        pointer_name(6, 1, "aaaa1111x"),
        pointer_name(6, 2, "bbbb2222x"),
        pointer_name(6, 2, "cccc3333x"),
    }
    assert names == {
        "pointer-000000006-a1-aaaa1111",
        "pointer-000000006-a2-bbbb2222",
        "pointer-000000006-a2-cccc3333",
    }
