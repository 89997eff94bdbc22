"""MLflow run identity through the operator, against a real `mlflow server` and kmock."""

from __future__ import annotations

import pytest
import yaml

from sphinxx.sweep import mlflow_runs as tracking
from tests.schema.corpus import DATA
from tests.services.switch import Switch

from .conftest import Cluster, now_iso, wait_for

pytestmark = pytest.mark.slow


def test_runs_are_found_by_tag_not_created_twice(mlflow_server) -> None:
    uri = mlflow_server.tracking_uri
    sweep = tracking.SweepRef("ns", "sweep", "sweep-uid-1")
    parent = tracking.ensure_parent_run(uri, "idempotence", sweep)
    assert tracking.ensure_parent_run(uri, "idempotence", sweep) == parent
    point = tracking.PointRef("ns", "point", "run-uid-1", "debug", 0.5, sweep="sweep")
    child = tracking.ensure_child_run(uri, "idempotence", point, parent)
    assert tracking.ensure_child_run(uri, "idempotence", point, parent) == child
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(child)
    assert run.info.run_name == "point" and run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags[tracking.TAG_RUN_UID] == "run-uid-1" and run.data.tags[tracking.TAG_SWEEP] == "sweep"
    assert run.data.tags[tracking.TAG_MODEL] == "debug" and run.data.tags[tracking.TAG_FRACTION] == "0.5"


def _config(cluster: Cluster, run: str) -> dict:
    """The config the current attempt's job reads (its run identity travels only there)."""
    uri = cluster.status("trainingruns", run)["configUri"]
    return yaml.safe_load(open(uri.removeprefix("file://")).read())


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
                "data": DATA,
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
    tracking_cfg = _config(cluster, run)["tracking"]
    assert tracking_cfg["mlflow_run_id"] == child and tracking_cfg["uri"] == uri
    assert tracking_cfg["mlflow_parent_run_id"] == parent
    cluster.drive(
        first, jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed", endTime=now_iso()
    )
    second = wait_for(lambda: len(cluster.rayjobs(run)) == 2 and (set(cluster.rayjobs(run)) - {first}).pop())
    assert _config(cluster, run)["tracking"]["mlflow_run_id"] == child  # the retry continues the same run

    cluster.drive(second, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime=now_iso())
    wait_for(lambda: client.get_run(child).info.status == "FINISHED", what="the child run to finish")
    experiment = client.get_experiment_by_name("e2e").experiment_id
    children = client.search_runs([experiment], filter_string=f"tags.`{tracking.TAG_RUN_UID}` != ''")
    assert [r.info.run_id for r in children] == [child]
    wait_for(lambda: cluster.status("scalingsweeps", "tracked").get("phase") == "Succeeded")
    wait_for(lambda: client.get_run(parent).info.status == "FINISHED", what="the parent run to end")
    assert cluster.status("scalingsweeps", "tracked")["mlflowRunStatus"] == "FINISHED"


def test_an_mlflow_outage_is_a_condition_and_the_rayjob_gets_its_run_later(
    operator_server, cluster, mlflow_server, tmp_path
) -> None:
    """MLflow is down when the run starts: the RayJob is created anyway (its config says the run id
    is coming), TrackingReady=False with one event; when MLflow answers, the run id reaches the
    status and the stored config the job reads, and the point keeps its one attempt and one run."""
    from mlflow.tracking import MlflowClient

    switch = Switch(mlflow_server.tracking_uri)  # off: connections close at once
    run = {
        "apiVersion": "sphinxx.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "outage"},
        "spec": {
            "config": {
                "preset": "debug",
                "storage": {"uri": f"file://{tmp_path}"},
                "tracking": {"uri": switch.url, "experiment": "outage"},
                "data": DATA,
            }
        },
    }
    try:
        cluster.kube.apply(run, cluster.ns)

        def unreachable():
            conditions = cluster.status("trainingruns", "outage").get("conditions") or []
            return next(
                (c for c in conditions if c["type"] == "TrackingReady" and c["status"] == "False"), None
            )

        assert wait_for(unreachable, what="TrackingReady=False")["reason"] == "MLflowUnreachable"
        # kopf posts events from its own queue, so the event may land just after the condition
        wait_for(
            lambda: ("Warning", "MLflowUnreachable") in {(t, r) for t, r, _ in cluster.events("outage")},
            what="the MLflowUnreachable event",
        )
        (job,) = wait_for(lambda: cluster.rayjobs("outage"), what="the RayJob, before any MLflow run")
        waiting = _config(cluster, "outage")["tracking"]
        assert waiting["await_run_id"] is True and waiting["mlflow_run_id"] is None
        assert operator_server.healthy()

        switch.on()
        child = wait_for(
            lambda: cluster.status("trainingruns", "outage").get("mlflowRunId"), what="the run id"
        )
        stored = _config(cluster, "outage")["tracking"]
        assert stored["mlflow_run_id"] == child and stored["await_run_id"] is False
        ready = wait_for(lambda: not unreachable() and cluster.status("trainingruns", "outage")["conditions"])
        assert {c["type"]: c["status"] for c in ready}["TrackingReady"] == "True"
        assert set(cluster.rayjobs("outage")) == {job}  # the same attempt: nothing dropped or redone
        client = MlflowClient(mlflow_server.tracking_uri)
        experiment = client.get_experiment_by_name("outage").experiment_id
        runs = client.search_runs([experiment], filter_string=f"tags.`{tracking.TAG_RUN}` = 'outage'")
        assert [r.info.run_id for r in runs] == [child]
    finally:
        switch.close()
