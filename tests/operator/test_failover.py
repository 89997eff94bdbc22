"""Operators as they run in a cluster: replicas with kopf peering, namespace scopes, delete policies.

Real `sphinxx operator run` processes against the Kubernetes emulator (kmock over HTTP); RayJob
status is written the way KubeRay writes it (as in test_operator_e2e.py), checkpoints go to the
moto S3 server.

- two replicas with peering: the active one is SIGKILLed mid-sweep (a crashed pod, a lost node);
  the paused one takes over once the dead one's peering record expires, nothing is created
  twice, and the sweep finishes;
- an operator scoped to one namespace never touches objects of another;
- deleting a sweep with `deletePolicy: Delete` removes its RayJobs, TrainingRuns and (only with
  this policy) every point's checkpoints; with `Keep` nothing on S3 is removed.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.schema.corpus import DATA
from tests.services.operator import start_operator

from .conftest import Cluster, now_iso, stays, wait_for

pytestmark = pytest.mark.slow

PEERING = "sphinxx"
TAKEOVER_S = 60  # the peering lifetime the test operators use (15 s), plus start-up on a loaded machine


def _sweep(name: str, storage: str, **spec) -> dict:
    return {
        "apiVersion": "sphinxx.dev/v1alpha1",
        "kind": "ScalingSweep",
        "metadata": {"name": name},
        "spec": {
            "base": {"preset": "debug", "storage": {"uri": storage}, "data": DATA},
            "axes": {"models": ["debug"], "dataFractions": [0.5, 1.0]},
            **spec,
        },
    }


def _run(name: str, storage: str) -> dict:
    return {
        "apiVersion": "sphinxx.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {"config": {"preset": "debug", "storage": {"uri": storage}, "data": DATA}},
    }


def _succeed(cluster: Cluster, rayjob: str) -> None:
    cluster.drive(rayjob, jobDeploymentStatus="Running", jobStatus="RUNNING", startTime=now_iso())
    cluster.drive(
        rayjob, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime=now_iso(), succeeded=1
    )


def _attempts(cluster: Cluster) -> Counter:
    return Counter(
        (j["metadata"]["labels"]["sphinxx.dev/trainingrun"], j["metadata"]["labels"]["sphinxx.dev/attempt"])
        for j in cluster.rayjobs().values()
    )


def _created_events(cluster: Cluster) -> int:
    return sum(
        r == "AttemptCreated" and m.startswith("RayJob ")
        for n in cluster.runs()
        for _, r, m in cluster.events(n)
    )


def test_peering_failover_mid_sweep_creates_nothing_twice(kube, s3_server, cluster, tmp_path) -> None:
    ns = cluster.ns
    cluster.api.create_namespaced_custom_object(
        "kopf.dev",
        "v1",
        ns,
        "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}},
    )  # fmt: skip  (the chart creates it; kopf requires it with --peering)
    work = tmp_path / "ops"
    active = start_operator(work, kube, s3_server.env, [ns], peering=PEERING, priority=200, name="replica-a")
    standby = start_operator(work, kube, s3_server.env, [ns], peering=PEERING, priority=100, name="replica-b")
    try:
        # Both start paused until they have read the peering object; only the highest priority resumes.
        resumed = "Resuming operations after the pause"
        wait_for(lambda: resumed in active.process.log_path.read_text(), 60, "the active replica to resume")
        stays(lambda: resumed not in standby.process.log_path.read_text(), 3)
        cluster.kube.apply(_sweep("ha", f"file://{tmp_path}/ckpt", maxParallelRuns=1), ns)
        first = wait_for(
            lambda: len(cluster.rayjobs()) == 1 and cluster.rayjobs(), 60, "the first point's RayJob"
        )
        assert len(cluster.runs()) == 2  # made by the active replica: the standby paused before the apply
        # Events are posted after the object they report; kill only once this one's is out (a
        # loaded machine can take seconds), so the count below is about duplicates, not a race.
        wait_for(lambda: _created_events(cluster) == 1, 60, "the first point's AttemptCreated event")

        active.process.kill()  # mid-sweep: one point running, the other waiting for its slot
        killed = time.monotonic()
        for name in first:  # the first point finishes while no operator is active
            _succeed(cluster, name)
        wait_for(
            lambda: len(cluster.rayjobs()) == 2, TAKEOVER_S, "the standby replica to start the second point"
        )
        takeover = time.monotonic() - killed
        assert "Resuming operations after the pause" in standby.process.log_path.read_text()
        (second,) = set(cluster.rayjobs()) - set(first)
        _succeed(cluster, second)
        wait_for(lambda: cluster.status("scalingsweeps", "ha").get("phase") == "Succeeded", 60, "the sweep")
        stays(lambda: len(cluster.rayjobs()) == 2 and len(cluster.runs()) == 2, 3)
        counts = _attempts(cluster)
        assert sorted(counts) == [("ha-debug-d100", "1"), ("ha-debug-d50", "1")] and set(counts.values()) == {
            1
        }
        runs = cluster.runs()
        assert {r["status"]["phase"] for r in runs.values()} == {"Succeeded"}
        assert all(r["status"]["attempt"] == 1 for r in runs.values())
        # One RayJob creation reported per run (the phase change to Pending is its own event).
        assert _created_events(cluster) == 2, [cluster.events(n) for n in runs]
        print(f"\n[failover] takeover after {takeover:.0f}s")
    finally:
        active.process.stop()
        standby.process.stop()


def test_a_namespace_scoped_operator_ignores_other_namespaces(kube, s3_server, cluster, tmp_path) -> None:
    other = Cluster(kube, kube.new_namespace("other"))
    operator = start_operator(tmp_path / "ops", kube, s3_server.env, [cluster.ns], name="scoped")
    try:
        other.kube.apply(_run("theirs", f"file://{tmp_path}/ckpt"), other.ns)
        cluster.kube.apply(_run("ours", f"file://{tmp_path}/ckpt"), cluster.ns)
        wait_for(lambda: cluster.rayjobs("ours"), 60, "our run's RayJob")
        # (the RayJob is created before the run's status patch lands)
        wait_for(
            lambda: cluster.status("trainingruns", "ours").get("phase") == "Pending", 30, "our run's phase"
        )

        def untouched() -> bool:
            theirs = other.get("trainingruns", "theirs") or {}
            meta = theirs.get("metadata") or {}
            return not theirs.get("status") and not meta.get("finalizers") and not other.rayjobs()

        stays(untouched, 5)
    finally:
        operator.process.stop()
        for name in list(other.runs()):
            other.patch("trainingruns", name, {"metadata": {"finalizers": None}})
            other.api.delete_namespaced_custom_object(
                "sphinxx.dev", "v1alpha1", other.ns, "trainingruns", name
            )


@pytest.mark.parametrize("policy", ["Delete", "Keep"])
def test_deleting_a_sweep_follows_its_delete_policy(
    policy, kube, s3_server, cluster, s3_env, s3_bucket, tmp_path
) -> None:
    operator = start_operator(
        tmp_path / "ops", kube, s3_server.env, [cluster.ns], name=f"policy-{policy.lower()}"
    )
    try:
        _delete_sweep(policy, cluster, s3_bucket, tmp_path)
    finally:
        operator.process.stop()


def _delete_sweep(policy: str, cluster: Cluster, s3_bucket: str, tmp_path) -> None:
    from sphinxx.storage import CheckpointStore

    prefix = f"s3://{s3_bucket}/sweeps"
    name = f"gone-{policy.lower()}"
    cluster.kube.apply(_sweep(name, prefix, deletePolicy=policy), cluster.ns)
    jobs = wait_for(lambda: len(cluster.rayjobs()) == 2 and cluster.rayjobs(), 120, "both points' RayJobs")
    shard = tmp_path / "shard"
    shard.mkdir()
    (shard / "weights.bin").write_bytes(b"\x01" * 256)
    run_ids = []
    for run in cluster.runs():
        run_id = wait_for(lambda run=run: cluster.status("trainingruns", run).get("runId"), 30, "the run id")
        CheckpointStore(prefix, run_id).save(10, str(shard), metadata={"metrics": {"loss": 2.0}})
        run_ids.append(run_id)
    for job in jobs:
        cluster.drive(job, jobDeploymentStatus="Running", jobStatus="RUNNING", startTime=now_iso())
    wait_for(
        lambda: all(cluster.status("trainingruns", r).get("lastCheckpoint") for r in cluster.runs()),
        30,
        "checkpoints",
    )

    cluster.kube.kubectl("delete", "sweep", name, "-n", cluster.ns, "--wait=false")
    wait_for(lambda: cluster.get("scalingsweeps", name) is None, 60, "the sweep to go")
    wait_for(lambda: not cluster.runs() and not cluster.rayjobs(), 60, "its TrainingRuns and RayJobs to go")
    left = {run_id: [c.step for c in CheckpointStore(prefix, run_id).committed()] for run_id in run_ids}
    if policy == "Delete":
        assert left == {run_id: [] for run_id in run_ids}
        assert all(
            CheckpointStore(prefix, r).read_run_config() is None for r in run_ids
        )  # the whole run root
    else:
        assert left == {run_id: [10] for run_id in run_ids}
