"""The operator end to end: `sphinxx operator run` against kmock over HTTP, driven through kubectl.

RayJob status is written the way KubeRay writes it (jobDeploymentStatus / jobStatus / reason /
message / startTime / endTime / failed / succeeded); there is no KubeRay here, so a RayCluster is
created by the test where KubeRay would create one.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.schema.corpus import BAD, DATA

from .conftest import Cluster, now_iso, stays, wait_for

pytestmark = pytest.mark.slow


def _sweep(name: str, storage: str, **spec) -> dict:
    return {
        "apiVersion": "sphinxx.dev/v1alpha1",
        "kind": "ScalingSweep",
        "metadata": {"name": name},
        "spec": {
            "base": {"preset": "debug", "storage": {"uri": storage}, "data": DATA},
            "axes": {"models": ["debug", "debug-moe"], "dataFractions": [0.5, 1.0]},
            **spec,
        },
    }


def _run(name: str, storage: str, **spec) -> dict:
    return {
        "apiVersion": "sphinxx.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {"config": {"preset": "debug", "storage": {"uri": storage}, "data": DATA}, **spec},
    }


def _succeed(cluster: Cluster, rayjob: str) -> None:
    cluster.drive(rayjob, jobDeploymentStatus="Initializing", jobStatus="")
    cluster.drive(rayjob, jobDeploymentStatus="Running", jobStatus="RUNNING", startTime=now_iso())
    cluster.drive(
        rayjob, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime=now_iso(), succeeded=1
    )


def _fail(cluster: Cluster, rayjob: str) -> None:
    cluster.drive(rayjob, jobDeploymentStatus="Running", jobStatus="RUNNING", startTime=now_iso())
    cluster.drive(
        rayjob,
        jobDeploymentStatus="Failed",
        jobStatus="FAILED",
        reason="AppFailed",
        message="Job entrypoint command failed with exit code 1",
        endTime=now_iso(),
        failed=1,
    )


def _attempts(cluster: Cluster, run: str) -> dict[int, str]:
    jobs = cluster.rayjobs(run)
    return {int(j["metadata"]["labels"]["sphinxx.dev/attempt"]): name for name, j in jobs.items()}


def test_sweep_runs_points_smallest_first_within_max_parallel(operator_server, cluster, tmp_path) -> None:
    from sphinxx.storage import CheckpointStore

    cluster.kube.apply(_sweep("grid", f"file://{tmp_path}", maxParallelRuns=2), cluster.ns)
    runs = wait_for(lambda: len(cluster.runs()) == 4 and cluster.runs(), what="4 TrainingRuns")
    assert sorted(runs) == ["grid-debug-d100", "grid-debug-d50", "grid-debug-moe-d100", "grid-debug-moe-d50"]
    first = wait_for(lambda: len(cluster.rayjobs()) == 2 and cluster.rayjobs(), what="2 RayJobs")
    assert {j["metadata"]["labels"]["sphinxx.dev/trainingrun"] for j in first.values()} == {
        "grid-debug-d50",
        "grid-debug-d100",
    }
    stays(lambda: len(cluster.rayjobs()) == 2)
    # The points waiting for a slot say so, distinctly from the admitted ones (kubectl's PHASE column).
    waiting = {"grid-debug-moe-d50", "grid-debug-moe-d100"}
    wait_for(
        lambda: (
            {n for n, r in cluster.runs().items() if (r.get("status") or {}).get("phase") == "Queued"}
            == waiting
        )
    )
    rows = [
        line.split() for line in cluster.kube.kubectl("get", "trun", "-n", cluster.ns).stdout.splitlines()[1:]
    ]
    assert {row[0] for row in rows if row[1] == "Queued"} == waiting
    assert wait_for(lambda: cluster.status("scalingsweeps", "grid").get("counts", {}).get("queued") == 2)

    def finish(rayjob: str) -> None:
        # The job commits a last checkpoint with its loss (bigger model, more data: lower loss).
        run = cluster.get("rayjobs", rayjob, "ray.io", "v1")["metadata"]["labels"]["sphinxx.dev/trainingrun"]
        run_id = wait_for(lambda: cluster.status("trainingruns", run).get("runId"))
        loss = 3.0 - (0.5 if "moe" in run else 0.0) - (0.3 if run.endswith("d100") else 0.0)
        # what the job records at each commit: the loss and the fit's N and D
        fit = {
            "num_params": 2e6 if "moe" in run else 1e6,
            "tokens_seen": 2e4 if run.endswith("d100") else 1e4,
        }
        CheckpointStore(f"file://{tmp_path}", run_id).save(
            10, str(shard), metadata={"metrics": {"loss": loss, **fit}}
        )
        cluster.drive(rayjob, jobDeploymentStatus="Running", jobStatus="RUNNING", startTime=now_iso())
        wait_for(
            lambda: cluster.status("trainingruns", run).get("metrics", {}).get("loss") == loss, what="loss"
        )
        _succeed(cluster, rayjob)

    shard = tmp_path / "shard"
    shard.mkdir()
    (shard / "weights.bin").write_bytes(b"\x01" * 64)
    for name in first:
        finish(name)
    wait_for(lambda: len(cluster.rayjobs()) == 4, what="the next two points to start")
    for name in set(cluster.rayjobs()) - set(first):
        finish(name)
    done = wait_for(
        lambda: (
            cluster.status("scalingsweeps", "grid").get("phase") == "Succeeded"
            and cluster.status("scalingsweeps", "grid")
        )
    )
    assert done["counts"]["succeeded"] == 4 and done["progress"] == "4/4" and len(done["points"]) == 4

    table = cluster.kube.kubectl("get", "sweep", "grid", "-n", cluster.ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "DONE", "QUEUED", "RUNNING", "FAILED", "ETA", "AGE"]
    sweep_row = _rows(table)[0]
    assert [sweep_row[k] for k in ("NAME", "PHASE", "DONE", "RUNNING", "ETA")] == [
        "grid",
        "Succeeded",
        "4/4",
        "0",
        "",
    ]
    runs_table = cluster.kube.kubectl("get", "trun", "-n", cluster.ns).stdout.splitlines()
    assert runs_table[0].split() == [
        "NAME", "PHASE", "MODEL", "DATA", "STEP", "LOSS", "TOK/S", "MFU", "ETA", "CKPT", "ATTEMPT", "AGE"
    ]  # fmt: skip
    # No progress record: Step and Loss are the committed checkpoint's; no rate, no ETA once it ended.
    row = _rows(runs_table)[0]
    assert [row[k] for k in ("NAME", "PHASE", "STEP", "LOSS", "TOK/S", "ETA", "CKPT")] == [
        "grid-debug-d100", "Succeeded", "10", "2.7", "", "", "10"
    ]  # fmt: skip
    wait_for(  # kopf posts events from its own queue, a moment after the status
        lambda: {"AttemptCreated", "Succeeded"} <= {r for _, r, _ in cluster.events("grid-debug-d50")},
        what="the point's AttemptCreated and Succeeded events",
    )
    law = wait_for(
        lambda: cluster.status("scalingsweeps", "grid").get("scalingLaw"), what="the scaling-law fit"
    )
    assert law["numPoints"] == 4 and law["form"] == "per-axis", law
    assert {p["axis"] for p in law["perAxis"]} == {"params", "data"}, law  # the numbers, not just prose

    out = _plugin(cluster, "status", "grid", "-n", cluster.ns)
    lines = out.splitlines()
    assert lines[0] == "sweep grid: Succeeded, 4/4 succeeded"
    assert lines[1].split() == [
        "NAME", "MODEL", "DATA", "PHASE", "ATTEMPT", "PREEMPTED", "RESIZED", "STEP", "LOSS", "TOK/S", "ETA",
        "CHECKPOINT",
    ]  # fmt: skip
    row = next(line.split() for line in lines if line.startswith("grid-debug-moe-d100"))
    # No job wrote a progress record here: the step and loss are the committed checkpoint's.
    assert row[:11] == [
        "grid-debug-moe-d100", "debug-moe", "1", "Succeeded", "1", "0", "0", "10", "2.2", "-", "-"
    ]  # fmt: skip
    assert row[11].endswith("/checkpoints/step-000000010")


def _rows(lines: list[str]) -> list[dict[str, str]]:
    """`kubectl get`'s table as dicts, cut at the header's column starts (an empty cell stays empty)."""
    import re

    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    names = lines[0].split()
    cut = [*starts[1:], None]
    return [{n: line[a:b].strip() for n, a, b in zip(names, starts, cut, strict=True)} for line in lines[1:]]


def _plugin(cluster: Cluster, *args: str) -> str:
    """`kubectl sphinxx ...`: kubectl finds the console script on PATH, as a user's kubectl would."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **cluster.kube.env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = subprocess.run(["kubectl", "sphinxx", *args], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_failed_attempt_resumes_from_committed_checkpoint(
    operator_server, cluster, s3_env, s3_bucket, tmp_path
) -> None:
    from sphinxx.storage import CheckpointStore

    prefix = f"s3://{s3_bucket}/runs"
    cluster.kube.apply(
        _run("resumer", prefix, failurePolicy={"maxRetries": 1, "backoffSeconds": 0}), cluster.ns
    )
    first = wait_for(lambda: _attempts(cluster, "resumer").get(1), what="attempt 1")
    run_id = wait_for(lambda: cluster.status("trainingruns", "resumer").get("runId"))

    # The job committed step 20, then left a partial step 30 behind (no manifest) when it died.
    store = CheckpointStore(prefix, run_id)
    shard = tmp_path / "shard"
    shard.mkdir()
    (shard / "model.bin").write_bytes(b"\x00" * 1024)
    committed = store.save(20, str(shard), metadata={"metrics": {"loss": 2.5}})
    with store.writer(30) as writer:
        writer.upload_dir(str(shard))
    _fail(cluster, first)

    second = wait_for(lambda: _attempts(cluster, "resumer").get(2), what="attempt 2")
    job = cluster.get("rayjobs", second, "ray.io", "v1")
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["SPHINXX_ATTEMPT"] == "2"
    stored = CheckpointStore(prefix, run_id).read_run_config()
    assert yaml.safe_load(stored)["run_id"] == run_id  # identity travels in the stored config
    assert job["metadata"]["annotations"]["sphinxx.dev/resume-from"] == committed.uri
    st = cluster.status("trainingruns", "resumer")
    assert st["phase"] == "Resuming" and st["lastCheckpoint"] == {"step": 20, "uri": committed.uri}
    assert st["metrics"]["loss"] == 2.5 and st["attempt"] == 2

    _fail(cluster, second)  # the one retry is used up
    failed = wait_for(lambda: cluster.status("trainingruns", "resumer").get("phase") == "Failed" and True)
    stays(lambda: sorted(_attempts(cluster, "resumer")) == [1, 2])
    st = cluster.status("trainingruns", "resumer")
    assert (
        failed and next(c for c in st["conditions"] if c["type"] == "Failed")["reason"] == "RetriesExhausted"
    )
    assert ("Warning", "AttemptFailed") in {(t, r) for t, r, _ in cluster.events("resumer")}

    # A manual resume restarts the run with a fresh retry budget (here: one more automatic retry).
    cluster.kube.kubectl(
        "annotate", "trun", "resumer", "-n", cluster.ns, "sphinxx.dev/resume=now", "--overwrite"
    )
    third = wait_for(lambda: _attempts(cluster, "resumer").get(3), what="attempt 3 after the annotation")
    _fail(cluster, third)
    fourth = wait_for(lambda: _attempts(cluster, "resumer").get(4), what="attempt 4 (the fresh retry)")
    _fail(cluster, fourth)
    wait_for(lambda: cluster.status("trainingruns", "resumer").get("phase") == "Failed")

    assert "resume requested" in _plugin(cluster, "resume", "trun", "resumer", "-n", cluster.ns)
    fifth = wait_for(
        lambda: _attempts(cluster, "resumer").get(5), what="attempt 5 after kubectl sphinxx resume"
    )
    logs = _plugin(cluster, "logs", "resumer", "-n", cluster.ns)
    assert f"job/{fifth}" in logs and committed.uri in logs


def test_worker_bounds_edit_patches_the_raycluster(operator_server, cluster, tmp_path) -> None:
    cluster.kube.apply(_run("elastic", f"file://{tmp_path}", minWorkers=1, maxWorkers=2), cluster.ns)
    rayjob = wait_for(lambda: _attempts(cluster, "elastic").get(1))
    spec = cluster.get("rayjobs", rayjob, "ray.io", "v1")["spec"]["rayClusterSpec"]
    raycluster = {  # what KubeRay creates from the RayJob's rayClusterSpec
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {
            "name": f"{rayjob}-raycluster-x7k2p",
            "labels": {"ray.io/originated-from-crd": "RayJob"},
        },
        "spec": spec,
    }
    cluster.kube.apply(raycluster, cluster.ns)
    cluster.drive(
        rayjob,
        jobDeploymentStatus="Running",
        jobStatus="RUNNING",
        rayClusterName=raycluster["metadata"]["name"],
        rayClusterStatus={"desiredWorkerReplicas": 1, "availableWorkerReplicas": 1, "readyWorkerReplicas": 1},
    )
    wait_for(lambda: cluster.status("trainingruns", "elastic").get("phase") == "Running")

    cluster.kube.kubectl(
        "patch", "trun", "elastic", "-n", cluster.ns, "--type=merge", "-p", '{"spec":{"maxWorkers":4}}'
    )

    def group():
        rc = cluster.get("rayclusters", raycluster["metadata"]["name"], "ray.io", "v1")
        return rc["spec"]["workerGroupSpecs"][0]

    patched = wait_for(lambda: group()["maxReplicas"] == 4 and group())
    assert patched["minReplicas"] == 1 and patched["replicas"] == 1
    st = wait_for(
        lambda: cluster.status("trainingruns", "elastic").get("workers", {}).get("max") == 4 and True
    )
    workers = cluster.status("trainingruns", "elastic")["workers"]
    assert st and workers == {"min": 1, "max": 4, "desired": 1, "available": 1, "ready": 1}
    assert list(_attempts(cluster, "elastic")) == [1]  # no restart


def test_a_running_attempts_progress_record_shows_live_in_status_without_idle_writes(
    operator_server, cluster, tmp_path
) -> None:
    """What the job's rank 0 writes next to its checkpoints reaches `kubectl get trun` before any commit;
    an unchanged record costs no status write, and a malformed one is ignored with a reason."""
    import time

    from sphinxx.schema.progress import ProgressRecord, encode
    from sphinxx.storage import CheckpointStore

    cluster.kube.apply(_run("live", f"file://{tmp_path}"), cluster.ns)
    rayjob = wait_for(lambda: _attempts(cluster, "live").get(1))
    run_id = wait_for(lambda: cluster.status("trainingruns", "live").get("runId"))
    cluster.drive(rayjob, jobDeploymentStatus="Running", jobStatus="RUNNING", startTime=now_iso())
    store = CheckpointStore(f"file://{tmp_path}", run_id)

    def report(step: int) -> None:  # what the job's ProgressWriter writes, 2 s a step, 100 steps
        store.write_progress(encode(ProgressRecord(
            run_id=run_id, attempt=1, step=step, total_steps=100, loss=3.0 - step / 100, tokens_per_s=2048.0,
            mfu=0.25, seconds_per_step=2.0, eta_seconds=(100 - step) * 2.0, time=time.time(),
        )))  # fmt: skip

    report(5)
    live = wait_for(
        lambda: cluster.status("trainingruns", "live").get("progress", {}).get("step") == 5 and True
    )
    st = cluster.status("trainingruns", "live")
    assert live and st["phase"] == "Running" and "lastCheckpoint" not in st  # before any checkpoint
    assert (st["progress"]["eta"], st["progress"]["etaSeconds"], st["progress"]["loss"]) == (
        "0:03:10",
        190,
        2.95,
    )
    reported = next(c for c in st["conditions"] if c["type"] == "ProgressReported")
    assert (reported["status"], reported["reason"]) == ("True", "Reported")
    row = _rows(cluster.kube.kubectl("get", "trun", "live", "-n", cluster.ns).stdout.splitlines())[0]
    assert [row[k] for k in ("PHASE", "STEP", "LOSS", "TOK/S", "MFU", "ETA", "CKPT")] == [
        "Running", "5", "2.95", "2048", "0.25", "0:03:10", ""
    ]  # fmt: skip
    report(9)
    wait_for(lambda: cluster.status("trainingruns", "live")["progress"]["step"] == 9, what="step 9")

    # Nothing changes: the operator keeps reading (once a second here) but writes no status.
    key = ("PATCH", "trainingruns", "status")
    before = cluster.kube.request_totals().get(key, 0)
    time.sleep(3)
    assert cluster.kube.request_totals().get(key, 0) == before

    store.write_progress(b'{"format_version": 1, "run_id": "%s", "step": "ten"}' % run_id.encode())
    bad = wait_for(
        lambda: next(
            (c for c in cluster.status("trainingruns", "live")["conditions"]
             if c["type"] == "ProgressReported" and c["status"] == "False"), None,
        ), what="ProgressReported=False",
    )  # fmt: skip
    assert bad["reason"] == "Malformed" and "progress.json.step" in bad["message"]
    progress = cluster.status("trainingruns", "live")["progress"]
    assert progress["step"] == 9 and "eta" not in progress  # the last figures stay; no ETA from them
    assert cluster.status("trainingruns", "live")["phase"] == "Running"


def test_suspend_and_resume_toggle_the_rayjob(operator_server, cluster, tmp_path) -> None:
    cluster.kube.apply(_run("pausable", f"file://{tmp_path}"), cluster.ns)
    rayjob = wait_for(lambda: _attempts(cluster, "pausable").get(1))
    cluster.drive(rayjob, jobDeploymentStatus="Running", jobStatus="RUNNING")
    cluster.kube.kubectl(
        "patch", "trun", "pausable", "-n", cluster.ns, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    wait_for(lambda: cluster.get("rayjobs", rayjob, "ray.io", "v1")["spec"]["suspend"] is True)
    cluster.drive(rayjob, jobDeploymentStatus="Suspended", jobStatus="")
    wait_for(lambda: cluster.status("trainingruns", "pausable").get("phase") == "Suspended")

    cluster.kube.kubectl(
        "patch", "trun", "pausable", "-n", cluster.ns, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    wait_for(lambda: cluster.get("rayjobs", rayjob, "ray.io", "v1")["spec"]["suspend"] is False)
    wait_for(lambda: cluster.status("trainingruns", "pausable").get("phase") == "Resuming")
    stays(lambda: list(_attempts(cluster, "pausable")) == [1])


def _non_finite(data: object) -> bool:
    if isinstance(data, dict):
        return any(_non_finite(v) for v in data.values())
    if isinstance(data, list):
        return any(_non_finite(v) for v in data)
    return isinstance(data, float) and not math.isfinite(data)


def test_bad_specs_get_invalid_with_field_path_and_no_rayjob(operator_server, cluster) -> None:
    applied = []
    for case in BAD:
        obj = {"apiVersion": "sphinxx.dev/v1alpha1", "kind": case.kind, "metadata": {"name": case.name}}
        try:  # kmock does not enforce the CRD schema; it does check object names, as every server does
            cluster.kube.apply({**obj, "spec": case.spec}, cluster.ns)
            applied.append(case)
        except AssertionError as err:
            if "unsupported value" in str(err):  # NaN and inf: kubectl cannot even encode them as JSON
                assert _non_finite(case.spec), (case.id, err)
                continue
            assert case.path == "metadata.name" and "metadata.name" in str(err), (case.id, err)
    assert len(applied) >= 40
    for case in applied:
        plural = "trainingruns" if case.kind == "TrainingRun" else "scalingsweeps"

        def invalid(plural=plural, name=case.name):
            conditions = cluster.status(plural, name).get("conditions") or []
            return next((c for c in conditions if c["type"] == "Invalid" and c["status"] == "True"), None)

        condition = wait_for(invalid, what=f"{case.id}: Invalid condition")
        assert condition["message"].startswith(f"{case.path}: "), (case.id, condition["message"])
        wait_for(
            lambda name=case.name, path=case.path: any(
                r == "InvalidSpec" and m.startswith(path) for _, r, m in cluster.events(name)
            ),
            what=f"{case.id}: InvalidSpec event",
        )
    # Nothing was created for any of them: no RayJob, and no TrainingRun but the bad ones applied.
    assert cluster.rayjobs() == {}
    assert set(cluster.runs()) == {case.name for case in applied if case.kind == "TrainingRun"}


def test_axis_edit_suspend_propagation_and_deletion(operator_server, cluster, tmp_path) -> None:
    cluster.kube.apply(_sweep("edits", f"file://{tmp_path}"), cluster.ns)
    wait_for(lambda: len(cluster.rayjobs()) == 4, what="4 RayJobs (no limit)")
    before = {n: r["metadata"]["uid"] for n, r in cluster.runs().items()}

    edited = _sweep("edits", f"file://{tmp_path}")
    edited["spec"]["axes"]["dataFractions"] = [1.0, 0.25]
    cluster.kube.apply(edited, cluster.ns)
    wait_for(
        lambda: (
            sorted(cluster.runs())
            == ["edits-debug-d100", "edits-debug-d25", "edits-debug-moe-d100", "edits-debug-moe-d25"]
        )
    )
    after = cluster.runs()
    assert after["edits-debug-d100"]["metadata"]["uid"] == before["edits-debug-d100"]  # untouched
    wait_for(
        lambda: (
            not [
                j
                for j in cluster.rayjobs().values()
                if "d50" in j["metadata"]["labels"]["sphinxx.dev/trainingrun"]
            ]
        )
    )

    wait_for(lambda: all(cluster.rayjobs(n) for n in cluster.runs()), what="a RayJob for every point")
    # One point paused by hand: the sweep neither resets it now nor resumes it with the others.
    cluster.kube.kubectl(
        "patch",
        "trun",
        "edits-debug-d25",
        "-n",
        cluster.ns,
        "--type=merge",
        "-p",
        '{"spec":{"suspend":true}}',
    )
    cluster.kube.kubectl(
        "patch", "sweep", "edits", "-n", cluster.ns, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    wait_for(
        lambda: all(r["spec"].get("suspend") for r in cluster.runs().values()),
        what="suspend to reach the points",
    )
    wait_for(lambda: all(j["spec"]["suspend"] for j in cluster.rayjobs().values()), what="RayJobs suspended")
    wait_for(lambda: cluster.status("scalingsweeps", "edits").get("phase") == "Suspended")

    cluster.kube.kubectl(
        "patch", "sweep", "edits", "-n", cluster.ns, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    others = ["edits-debug-d100", "edits-debug-moe-d100", "edits-debug-moe-d25"]
    wait_for(
        lambda: all(cluster.runs()[n]["spec"]["suspend"] is False for n in others),
        what="the points the sweep suspended to resume",
    )
    jobs = {n: next(iter(cluster.rayjobs(n))) for n in [*others, "edits-debug-d25"]}
    wait_for(
        lambda: all(
            cluster.get("rayjobs", jobs[n], "ray.io", "v1")["spec"]["suspend"] is False for n in others
        ),
        what="their RayJobs unsuspended",
    )
    stays(
        lambda: (
            cluster.runs()["edits-debug-d25"]["spec"]["suspend"] is True
            and cluster.get("rayjobs", jobs["edits-debug-d25"], "ray.io", "v1")["spec"]["suspend"] is True
        )
    )

    cluster.kube.kubectl("delete", "sweep", "edits", "-n", cluster.ns, "--wait=false")
    wait_for(lambda: cluster.get("scalingsweeps", "edits") is None, what="the sweep to go")
    wait_for(lambda: not cluster.runs() and not cluster.rayjobs(), what="points and RayJobs to go")


def test_operator_restart_midway_duplicates_nothing(operator_server, cluster, tmp_path) -> None:
    cluster.kube.apply(_sweep("restart", f"file://{tmp_path}", maxParallelRuns=1), cluster.ns)
    first = wait_for(lambda: len(cluster.rayjobs()) == 1 and cluster.rayjobs())
    operator_server.process.stop()
    for name in first:  # the job finishes while the operator is down
        _succeed(cluster, name)
    statuses = {n: r.get("status") for n, r in cluster.runs().items()}
    operator_server.restart()
    wait_for(lambda: len(cluster.rayjobs()) == 2, what="the next point after the restart")
    stays(lambda: len(cluster.rayjobs()) == 2 and len(cluster.runs()) == 4)
    runs = cluster.runs()
    assert runs["restart-debug-d50"]["status"]["phase"] == "Succeeded"
    assert runs["restart-debug-d50"]["status"]["runId"] == statuses["restart-debug-d50"]["runId"]
    assert runs["restart-debug-d50"]["status"]["attempt"] == 1
