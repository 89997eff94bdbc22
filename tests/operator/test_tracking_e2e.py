"""MLflow run identity through the operator, against a real `mlflow server` and kmock."""

from __future__ import annotations

import pytest
import yaml

from sphinxx.jobs.sweep import mlflow_runs as tracking
from tests.services.process import free_port

from .conftest import Cluster, now_iso, wait_for

pytestmark = pytest.mark.slow


def test_runs_are_found_by_tag_not_created_twice(mlflow_server) -> None:
    uri = mlflow_server.tracking_uri
    parent = tracking.ensure_parent_run(uri, "idempotence", "ns", "sweep", "sweep-uid-1")
    assert tracking.ensure_parent_run(uri, "idempotence", "ns", "sweep", "sweep-uid-1") == parent
    child = tracking.ensure_child_run(uri, "idempotence", "ns", "point", "run-uid-1", parent, {"k": "v"})
    assert (
        tracking.ensure_child_run(uri, "idempotence", "ns", "point", "run-uid-1", parent, {"k": "v"}) == child
    )
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(child)
    assert (
        run.data.tags["mlflow.parentRunId"] == parent and run.data.tags[tracking.TAG_RUN_UID] == "run-uid-1"
    )


def _env(cluster: Cluster, rayjob: str) -> dict:
    return yaml.safe_load(cluster.get("rayjobs", rayjob, "ray.io", "v1")["spec"]["runtimeEnvYAML"])[
        "env_vars"
    ]


def test_sweep_parent_and_child_runs_survive_retries(
    operator_server, cluster, mlflow_server, tmp_path
) -> None:
    from mlflow.tracking import MlflowClient

    uri = mlflow_server.tracking_uri
    sweep = {
        "apiVersion": "sphinxx.dev/v1alpha1",
        "kind": "ScalingSweep",
        "metadata": {"name": "tracked"},
        "spec": {
            "base": {
                "preset": "debug",
                "storage": {"uri": f"file://{tmp_path}"},
                "tracking": {"uri": uri, "experiment": "e2e"},
            },
            "axes": {"models": ["debug"], "dataFractions": [1.0]},
            "failurePolicy": {"maxRetries": 1, "backoffSeconds": 0},
        },
    }
    cluster.kube.apply(sweep, cluster.ns)
    parent = wait_for(
        lambda: cluster.status("scalingsweeps", "tracked").get("mlflowRunId"), what="parent run"
    )
    run = "tracked-debug-d100"
    child = wait_for(lambda: cluster.status("trainingruns", run).get("mlflowRunId"), what="child run")
    client = MlflowClient(uri)
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == parent

    first = wait_for(lambda: cluster.rayjobs(run) and next(iter(cluster.rayjobs(run))))
    assert (
        _env(cluster, first)["MLFLOW_RUN_ID"] == child and _env(cluster, first)["MLFLOW_TRACKING_URI"] == uri
    )
    cluster.drive(
        first, jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", endTime=now_iso()
    )
    second = wait_for(lambda: len(cluster.rayjobs(run)) == 2 and (set(cluster.rayjobs(run)) - {first}).pop())
    assert _env(cluster, second)["MLFLOW_RUN_ID"] == child  # the retry continues the same run

    cluster.drive(second, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime=now_iso())
    wait_for(lambda: client.get_run(child).info.status == "FINISHED", what="the child run to finish")
    experiment = client.get_experiment_by_name("e2e").experiment_id
    children = client.search_runs([experiment], filter_string=f"tags.`{tracking.TAG_RUN_UID}` != ''")
    assert [r.info.run_id for r in children] == [child]
    wait_for(lambda: cluster.status("scalingsweeps", "tracked").get("phase") == "Succeeded")
    wait_for(lambda: client.get_run(parent).info.status == "FINISHED", what="the parent run to end")
    assert cluster.status("scalingsweeps", "tracked")["mlflowRunStatus"] == "FINISHED"


def test_unreachable_mlflow_is_a_condition_not_a_crash(operator_server, cluster, tmp_path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    run = {
        "apiVersion": "sphinxx.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "untracked"},
        "spec": {
            "config": {"preset": "debug", "storage": {"uri": f"file://{tmp_path}"}, "tracking": {"uri": dead}}
        },
    }
    cluster.kube.apply(run, cluster.ns)

    def unreachable():
        conditions = cluster.status("trainingruns", "untracked").get("conditions") or []
        return next((c for c in conditions if c["type"] == "TrackingReady" and c["status"] == "False"), None)

    condition = wait_for(unreachable, what="TrackingReady=False")
    assert condition["reason"] == "MLflowUnreachable"
    assert ("Warning", "MLflowUnreachable") in {(t, r) for t, r, _ in cluster.events("untracked")}
    assert cluster.rayjobs() == {}  # the run id must exist before any attempt does
    assert operator_server.healthy()
