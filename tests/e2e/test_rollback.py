"""Rollback end to end: a killed run is rolled back two checkpoints with `kubectl sphinxx rollback`,
and its retry resumes there with the real job, in the same MLflow run, and succeeds.

    kubectl apply (a TrainingRun, maxRetries 0) -> operator -> RayJob attempt 1 -> Ray Train + S3
    driver SIGKILLed after 3+ commits -> Failed
    kubectl sphinxx rollback trun rb --to-step <two checkpoints back>
      -> the operator marks the newer commits rolled back (rollbacks.json; nothing deleted),
         notes it on the MLflow run and creates attempt 2 -> resumes at the chosen step
      -> the retry commits those steps again (each old one archived first) and three more:
         the pointer checkpoints it reports to Ray never collide with attempt 1's
    -> Succeeded; the run's status, events, checkpoints and MLflow history say what happened.

Before the pointer checkpoints were named per commit, this retry failed after its third commit
with FileNotFoundError from Ray Train's checkpoint manager (ops_runbooks/s3-checkpoint-problems.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from .conftest import S3_SECRET, TINY_SWEEP, _bin, cluster_sweep, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

RUN = "rb"
STEPS, INTERVAL = 20, 2


def _run_manifest(data_prefix: str, storage: str) -> dict[str, Any]:
    """tiny.yaml's base as one TrainingRun of the debug size: fixed steps, a checkpoint every 2."""
    base = cluster_sweep(TINY_SWEEP, data_prefix, storage)["spec"]["base"]
    base["preset"] = "debug"
    base["train"].update(steps=STEPS, checkpoint_interval=INTERVAL)
    base["storage"]["keep_last"] = 5  # the step rolled back to must survive retention
    base["tracking"]["experiment"] = "faults"
    return {
        "apiVersion": "sphinxx.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": RUN},
        "spec": {
            "config": base,
            "failurePolicy": {"maxRetries": 0},
            "resources": {"cpu": "2", "memory": "4Gi", "envFromSecrets": [S3_SECRET]},
        },
    }


def _status(kube, ns: str) -> dict[str, Any]:
    out = kube.kubectl("get", "trun", RUN, "-n", ns, "-o", "json", check=False)
    return (json.loads(out.stdout).get("status") or {}) if out.returncode == 0 else {}


def _attempts(kube, ns: str) -> dict[int, dict[str, Any]]:
    items = kube.get_json("rayjobs.ray.io", "-n", ns, "-l", f"sphinxx.dev/trainingrun={RUN}")["items"]
    return {int(j["metadata"]["labels"]["sphinxx.dev/attempt"]): j for j in items}


def _plugin(kube, *args: str) -> subprocess.CompletedProcess[str]:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **kube.env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return subprocess.run(["kubectl", "sphinxx", *args], env=env, capture_output=True, text=True, timeout=120)


def test_rollback_two_checkpoints_and_the_retry_resumes_there(
    kube, e2e_operator, kuberay, e2e_namespace, synth_on_s3, e2e_bucket, s3_server, mlflow_server, monkeypatch
) -> None:
    from mlflow.tracking import MlflowClient

    from sphinxx.storage import CheckpointStore, StorageOptions

    ns, prefix = e2e_namespace, f"s3://{e2e_bucket}/faults"
    kube.apply(_run_manifest(synth_on_s3, prefix), ns)
    run_id = wait_for(lambda: _status(kube, ns).get("runId"), 120, "the run id")
    options = StorageOptions(endpoint_url=s3_server.env["AWS_ENDPOINT_URL"])
    for key, value in s3_server.env.items():  # restored after the test: later tests set their own
        monkeypatch.setenv(key, value)
    store = CheckpointStore(prefix, run_id, options=options)

    # Attempt 1 commits at least three checkpoints, then its driver is killed.
    first = wait_for(lambda: _attempts(kube, ns).get(1), 120, "attempt 1")["metadata"]["name"]
    wait_for(lambda: len(store.committed()) >= 3, 1200, "three committed checkpoints", every=0.5)
    kuberay.kill_driver(first)
    wait_for(lambda: _status(kube, ns).get("phase") == "Failed", 120, "the run to be Failed")
    committed = [c.step for c in store.committed()]
    assert committed[-1] < STEPS, committed  # killed before the end
    target, rolled = committed[-3], committed[-2:]
    killed_at = time.time()

    # The rollback, as the runbook says. The plugin waits for the operator's answer.
    out = _plugin(kube, "rollback", "trun", RUN, "--to-step", str(target), "-n", ns)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"rolled back: step(s) {', '.join(map(str, rolled))} no longer count" in out.stdout, out.stdout
    st = _status(kube, ns)
    assert st["lastRollback"]["toStep"] == target and st["lastRollback"]["rolledBackSteps"] == rolled
    assert st["lastRollback"]["afterAttempt"] == 1
    log = store.rollbacks()
    assert [r.to_step for r in log.rollbacks] == [target]
    # Nothing was deleted: the rolled-back commits are still there, shown as such.
    ls = subprocess.run([_bin("sphinxx"), "ckpt", "ls", f"{prefix}/{run_id}"], capture_output=True, text=True,
                        env={**os.environ, **s3_server.env}, timeout=120)  # fmt: skip
    assert ls.returncode == 0, ls.stderr
    states = {int(line.split()[0]): line.split()[1] for line in ls.stdout.splitlines()[1:-1]}
    assert all(states[s] == "rolled-back" for s in rolled) and states[target].startswith("committed"), (
        ls.stdout
    )

    # Attempt 2 (a new RayJob; the retry budget was reset) resumes at the chosen step and succeeds.
    second = wait_for(lambda: _attempts(kube, ns).get(2), 120, "attempt 2")
    assert second["metadata"]["annotations"]["sphinxx.dev/resume-from"] == store.layout.step_dir(target)
    final = wait_for(
        lambda: _status(kube, ns).get("phase") in ("Succeeded", "Failed") and _status(kube, ns),
        1500,
        "the retry",
    )
    job_log = kuberay.log(second["metadata"]["name"])
    assert final["phase"] == "Succeeded", job_log[-4000:]
    assert final["lastCheckpoint"]["step"] == STEPS and final["attempt"] == 2
    summary = json.loads(next(line for line in reversed(job_log.splitlines()) if '"sphinxx_summary"' in line))
    assert summary["status"] == "succeeded" and summary["resumed_from"] == target, summary
    assert f"at step {target}/{STEPS}" in job_log
    assert "FileNotFoundError" not in job_log
    events = {(r, m) for _, r, m in _events(kube, ns)}
    assert any(r == "RolledBack" and f"resumes from step {target}" in m for r, m in events), events

    # The retry committed the rolled-back steps again; each old commit was archived first, whole.
    log = store.rollbacks()
    for entry in log.rollbacks[0].steps:
        assert entry.archive, entry
        archived = json.loads(store.fs().read_bytes(f"{entry.archive}/manifest.json"))
        assert archived["step"] == entry.step and archived["commit_id"] == entry.commit_id
        assert (
            archived["attempt"] == 1
        )  # (the new commits of these steps are attempt 2's; retention may drop them)

    # MLflow: one run; the rollback is written on it, and the superseded values are those logged
    # before the rollback (steps after the target appear twice; the later value is attempt 2's).
    mlflow = MlflowClient(mlflow_server.tracking_uri)
    run = mlflow.get_run(final["mlflowRunId"])
    assert run.data.tags["sphinxx.dev/rollback"].startswith(f"to-step={target} after-attempt=1 at=")
    assert f"Rolled back to step {target}" in run.data.tags["mlflow.note.content"]
    values: dict[int, list[int]] = defaultdict(list)
    for m in mlflow.get_metric_history(run.info.run_id, "loss"):
        values[m.step].append(m.timestamp)
    assert sorted(values) == list(range(1, STEPS + 1))
    assert all(len(values[s]) == 1 for s in range(1, target + 1))
    twice = 0
    for step in range(target + 1, rolled[-1] + 1):
        stamps = sorted(values[step])
        assert len(stamps) <= 2 and stamps[-1] > killed_at * 1000, (step, stamps)  # attempt 2's comes last
        twice += len(stamps) == 2 and stamps[0] < killed_at * 1000
    assert twice > 0, dict(values)  # attempt 1's values of the rolled-back steps are still there
    assert (
        _plugin(kube, "rollback", "trun", RUN, "--to-step", str(target), "-n", ns).returncode == 1
    )  # Succeeded


def _events(kube, ns: str) -> list[tuple[str, str, str]]:
    items = kube.get_json("events", "-n", ns, "--field-selector", f"involvedObject.name={RUN}")["items"]
    return [(e["type"], e["reason"], e["message"]) for e in items]
