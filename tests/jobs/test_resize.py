"""Resizes and preemptions lose nothing: `python -m sphinxx.jobs.train` on local Ray, end to end.

- A scale-up mid-run: the job starts on a Ray cluster of its own with room for one of its two
  workers; a second node joins while it trains; once rank 0 has seen the room for
  `resize_settle_seconds`, the group commits the step it is at and the next segment starts with
  two workers there. No step is trained or logged twice. The job's step budget is far away, so the
  test does not race training speed: a preStop ends it after a few steps at two workers, with
  `max_preemptions: 0` (the bound is reached: the run stops, committed, and says why).
- Two preemptions of one point with `max_failures: 1`: the real preStop hook writes the stop file
  twice while the job trains on the session's Ray; each time both workers commit their step and
  the next segment resumes there. The run succeeds, counting two preemptions and no failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from sphinxx.jobs.preemption import prestop
from sphinxx.storage import CheckpointStore
from tests.jobs.conftest import Job, read_traces, tiny_config, wait_until

pytestmark = pytest.mark.slow

GROW = Path(__file__).with_name("_grow_cluster.py")


def _logged_steps(tracking_uri: str, run_id: str) -> Counter[int]:
    from mlflow import MlflowClient

    return Counter(m.step for m in MlflowClient(tracking_uri).get_metric_history(run_id, "loss"))


def _pauses(tracking_uri: str, run_id: str, stops: list[int]) -> str:
    """What each planned stop cost in wall time (from the loss history's timestamps): the gap from
    the stopped step to the next one, against the median step; printed for the README's figures."""
    from mlflow import MlflowClient

    at = {m.step: m.timestamp / 1000 for m in MlflowClient(tracking_uri).get_metric_history(run_id, "loss")}
    gaps = sorted(at[s + 1] - at[s] for s in sorted(at)[:-1])
    pauses = [round(at[s + 1] - at[s], 1) for s in stops]
    return json.dumps({"stops_at": stops, "pause_s": pauses, "median_step_s": round(gaps[len(gaps) // 2], 2)})


def _trained_once(trace: Path, steps: int) -> list[dict]:
    """Every global batch trained exactly once over all segments (the sample audit trail)."""
    rows = read_traces(trace)
    seen = [p for r in rows for p in r["positions"]]
    assert len(seen) == len(set(seen)) == steps * 4
    return rows


def test_a_scale_up_mid_run_commits_its_step_and_resumes_bigger_redoing_none(
    tmp_path, synth, mlflow_server
) -> None:
    ray_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket names are limited
    cluster = subprocess.Popen(
        [sys.executable, str(GROW), ray_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    storage, name = f"file://{tmp_path}/ckpt", "grow"
    trace, stop_file = tmp_path / "trace", tmp_path / "pod" / "sphinxx-stop"
    stop_file.parent.mkdir()
    try:
        assert cluster.stdout is not None and cluster.stdin is not None
        address = cluster.stdout.readline().strip()
        cfg = tiny_config(
            synth, name, storage, mlflow_server.tracking_uri,
            train={"steps": 100_000, "checkpoint_interval": 100_000},  # commits: the resize's, the stop's
            parallel={"min_workers": 1, "max_workers": 2, "resize_check_seconds": 1,
                      "resize_settle_seconds": 21, "max_failures": 0, "max_preemptions": 0},
        )  # fmt: skip
        env = {
            **os.environ, "RAY_ADDRESS": address, "PYTHONUNBUFFERED": "1",
            "SPHINXX_STOP_FILE": str(stop_file), "SPHINXX_WORKER_ENV": "SPHINXX_STOP_FILE",
        }  # fmt: skip
        job = Job(tmp_path, name, cfg, env).start(extra_env={"SPHINXX_SAMPLE_TRACE": str(trace)})
        wait_until(
            lambda: [r for r in read_traces(trace) if r["step"] >= 2], 400, "step 3 on one worker", job
        )
        assert {r["rank"] for r in read_traces(trace)} == {0}  # one worker fits the 1-CPU head
        cluster.stdin.write("grow\n")  # a second 1-CPU node joins while the job trains
        cluster.stdin.flush()
        assert cluster.stdout.readline().strip() == "grown"
        at_two = wait_until(
            lambda: [r["step"] for r in read_traces(trace) if r["world_size"] == 2], 300, "two workers", job
        )
        three = min(at_two) + 3
        wait_until(lambda: [r for r in read_traces(trace) if r["step"] >= three], 120, "3 steps at two", job)
        assert prestop(str(stop_file), wait_s=120) == 0  # the job ends at a commit, two workers in
        assert job.wait(300) != 0, job.tail()
    finally:
        if cluster.poll() is None and cluster.stdin is not None:
            cluster.stdin.write("stop\n")
            cluster.stdin.flush()
        cluster.wait(120)
        shutil.rmtree(ray_dir, ignore_errors=True)

    summary = job.summary()
    assert "max_preemptions is 0" in summary["error"], summary
    assert summary["resizes"] == 1 and summary["preemptions"] == 1 and summary["failures"] == 0
    store = CheckpointStore(storage, name)
    grew_at, stopped_at = (store.get(c.step).manifest for c in store.committed())
    assert grew_at.metadata.world_size == 1 and grew_at.metrics["resizes"] == 1
    assert stopped_at.metadata.world_size == 2 and stopped_at.metrics["preemptions"] == 1
    log = job.log_path.read_text()
    assert "room for 1 more worker(s); growing once it has lasted 21 s" in log
    assert "stopped to grow (room for 1 more worker(s) beside 1)" in log
    assert "no more looks for room" not in log  # the next segment did start bigger

    # Nothing redone: every global batch trained once, every step logged once; two ranks after the resize.
    rows = _trained_once(trace, stopped_at.step)
    assert {r["world_size"] for r in rows if r["step"] >= grew_at.step} == {2}
    assert {r["world_size"] for r in rows if r["step"] < grew_at.step} == {1}
    logged = _logged_steps(mlflow_server.tracking_uri, summary["mlflow_run_id"])
    assert sorted(logged) == list(range(1, stopped_at.step + 1)) and set(logged.values()) == {1}
    print("resize cost:", _pauses(mlflow_server.tracking_uri, summary["mlflow_run_id"], [grew_at.step]))


def _preempt(job: Job, trace: Path, stop_file: Path, store: CheckpointStore, after: int) -> int:
    """Two steps past `after`, preempt the job's pod as Kubernetes would; the step it committed."""
    wait_until(
        lambda: [r for r in read_traces(trace) if r["step"] >= after + 2], 400, f"step {after + 3}", job
    )
    assert prestop(str(stop_file), wait_s=120) == 0  # the worker pods' preStop hook
    for marker in stop_file.parent.iterdir():  # a new pod starts with an empty /tmp
        marker.unlink()
    committed = wait_until(
        lambda: [c.step for c in store.committed() if c.step > after], 120, "a commit", job
    )
    return int(committed[0])


def test_two_preemptions_of_one_point_with_max_failures_1_still_finish(
    tmp_path, synth, s3_bucket, mlflow_server, job_env
) -> None:
    storage, name, steps = f"s3://{s3_bucket}/runs", "preempted-twice", 60
    trace, stop_file = tmp_path / "trace", tmp_path / "pod" / "sphinxx-stop"
    cfg = tiny_config(
        synth, name, storage, mlflow_server.tracking_uri,
        train={"steps": steps, "checkpoint_interval": 100},  # commits: the two stops and the last step
        parallel={"max_failures": 1},
    )  # fmt: skip
    stop_file.parent.mkdir()  # the pod's /tmp: the workers announce themselves there at start
    env = {
        **job_env,
        "SPHINXX_STOP_FILE": str(stop_file),  # what the operator sets on worker pods
        "SPHINXX_WORKER_ENV": job_env["SPHINXX_WORKER_ENV"] + ",SPHINXX_STOP_FILE",
    }
    job = Job(tmp_path, name, cfg, env).start(extra_env={"SPHINXX_SAMPLE_TRACE": str(trace)})
    store = CheckpointStore(storage, name)
    stops: list[int] = []
    for _ in range(2):
        stops.append(_preempt(job, trace, stop_file, store, after=(stops or [0])[-1]))
    assert job.wait(600) == 0, job.tail()

    summary = job.summary()
    assert summary["status"] == "succeeded" and summary["step"] == steps, summary
    assert (summary["preemptions"], summary["failures"]) == (2, 0)
    assert [c.step for c in store.committed()] == [*stops, steps]
    for n, step in enumerate(stops, 1):
        metrics = store.get(step).manifest.metrics
        assert metrics["preemptions"] == n and metrics["preempted_in_attempt"] == 1
    assert store.get(steps).manifest.metrics["preemptions"] == 2
    _trained_once(trace, steps)
    logged = _logged_steps(mlflow_server.tracking_uri, summary["mlflow_run_id"])
    assert sorted(logged) == list(range(1, steps + 1)) and set(logged.values()) == {1}
    print("preemption cost:", _pauses(mlflow_server.tracking_uri, summary["mlflow_run_id"], stops))
