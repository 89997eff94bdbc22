"""What the driver hands the workers travels as typed objects: pickled, never re-parsed."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from tests.jobs._tiny import tiny_run_config


def test_job_context_pickles_with_its_run_config_intact() -> None:
    from sphinxx.jobs.context import JobContext

    cfg = tiny_run_config("debug-moe", 2, 2, "s3://bucket/runs")
    job = JobContext(cfg, attempt=2, mlflow_run_id="abc", code_version="sphinxx-test")
    clone = pickle.loads(pickle.dumps(job))
    assert clone == job and type(clone.config) is type(cfg)
    assert clone.config.parallel.ep_size == 2 and clone.config.data.sources == cfg.data.sources
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.attempt = 3  # type: ignore[misc]
