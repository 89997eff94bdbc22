"""Resizes and preemptions lose nothing: `python -m sphinxx.jobs.train` on local Ray, end to end.

- A scale-up mid-run: the job starts on a Ray cluster of its own with room for one of its two
  workers; a second node joins while it trains; rank 0 sees the room, the group commits the step
  it is at and the next segment starts with two workers there. No step is trained or logged twice.
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
    try:
        assert cluster.stdout is not None and cluster.stdin is not None
        address = cluster.stdout.readline().strip()
        storage, name, steps = f"file://{tmp_path}/ckpt", "grow", 40
        trace = tmp_path / "trace"
        cfg = tiny_config(
            synth, name, storage, mlflow_server.tracking_uri,
            train={"steps": steps, "checkpoint_interval": 100},  # only the resize's commit and the last
            parallel={"min_workers": 1, "max_workers": 2, "resize_check_seconds": 1, "max_failures": 0},
        )  # fmt: skip
        env = {**os.environ, "RAY_ADDRESS": address, "PYTHONUNBUFFERED": "1"}
        job = Job(tmp_path, name, cfg, env).start(extra_env={"SPHINXX_SAMPLE_TRACE": str(trace)})
        wait_until(
            lambda: [r for r in read_traces(trace) if r["step"] >= 2], 400, "step 3 on one worker", job
        )
        assert {r["rank"] for r in read_traces(trace)} == {0}  # one worker fits the 1-CPU head
        cluster.stdin.write("grow\n")  # a second 1-CPU node joins while the job trains
        cluster.stdin.flush()
        assert cluster.stdout.readline().strip() == "grown"
        assert job.wait(600) == 0, job.tail()
    finally:
        if cluster.poll() is None and cluster.stdin is not None:
            cluster.stdin.write("stop\n")
            cluster.stdin.flush()
        cluster.wait(120)
        shutil.rmtree(ray_dir, ignore_errors=True)

    summary = job.summary()
    assert summary["status"] == "succeeded" and summary["step"] == steps, summary
    assert summary["resizes"] >= 1 and summary["preemptions"] == 0 and summary["failures"] == 0
    store = CheckpointStore(storage, name)
    resized_at = store.committed()[0].step
    commits = [store.get(c.step).manifest for c in store.committed()]
    grew_at = commits[0]
    assert grew_at.metadata.world_size == 1 and grew_at.metrics["resizes"] == 1 and not grew_at.metadata.final
    assert commits[-1].metadata.world_size == 2 and commits[-1].metadata.final
    assert "stopped to grow (room for 1 more worker(s) beside 1)" in job.log_path.read_text()

    # Nothing redone: every global batch trained once, every step logged once; two ranks after the resize.
    rows = _trained_once(trace, steps)
    assert {r["world_size"] for r in rows if r["step"] >= resized_at} == {2}
    assert {r["world_size"] for r in rows if r["step"] < resized_at} == {1}
    logged = _logged_steps(mlflow_server.tracking_uri, summary["mlflow_run_id"])
    assert sorted(logged) == list(range(1, steps + 1)) and set(logged.values()) == {1}
    print("resize cost:", _pauses(mlflow_server.tracking_uri, summary["mlflow_run_id"], [resized_at]))


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
    storage, name, steps = f"s3://{s3_bucket}/runs", "preempted-twice", 30
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
