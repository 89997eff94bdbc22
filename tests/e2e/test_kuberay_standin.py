"""The KubeRay stand-in itself, against kmock, with tiny shell entrypoints instead of training jobs.

The end-to-end sweep only sees RayJobs that run to the end or whose driver dies. Here each
lifecycle KubeRay implements is driven once and read back through the API: success, an
application failure, `suspend` and un-suspend, deletion, `activeDeadlineSeconds` and
`backoffLimit` retries, and the environment the entrypoint gets (Secrets named in the pods'
`envFrom`, the runtime env passed to Ray as `RAY_JOB_CONFIG_JSON_ENV_VAR`). No Ray is needed: the
entrypoints never connect to the address they are given.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from .conftest import wait_for
from .kuberay_standin import KubeRayStandIn

pytestmark = pytest.mark.slow  # subprocesses and a polling controller; about 20 s in all


class Api:
    def __init__(self, kube, namespace: str):
        self.ns = namespace
        self.custom = client.CustomObjectsApi(kube.api_client())
        self.core = client.CoreV1Api(self.custom.api_client)

    def create(self, name: str, entrypoint: str, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "metadata": {"name": name, "labels": {"app": "standin-test"}},
            "spec": {
                "entrypoint": entrypoint,
                "runtimeEnvYAML": yaml.safe_dump({"env_vars": {"FROM_RUNTIME_ENV": "rt-value"}}),
                "submissionMode": "K8sJobMode",
                "shutdownAfterJobFinishes": True,
                "ttlSecondsAfterFinished": 300,
                "rayClusterSpec": _cluster_spec(),
                **spec,
            },
        }
        return self.custom.create_namespaced_custom_object("ray.io", "v1", self.ns, "rayjobs", body)

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object("ray.io", "v1", self.ns, plural, name)
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def status(self, name: str) -> dict[str, Any]:
        return (self.get("rayjobs", name) or {}).get("status") or {}

    def patch_spec(self, name: str, **spec: Any) -> None:
        self.custom.patch_namespaced_custom_object("ray.io", "v1", self.ns, "rayjobs", name, {"spec": spec})

    def wait(self, name: str, deployment: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(
            lambda: (st := self.status(name)).get("jobDeploymentStatus") == deployment and st,
            timeout,
            f"{name} to be {deployment}",
            every=0.1,
        )


def _cluster_spec() -> dict[str, Any]:
    def pod(name: str, extra_env: list[dict[str, str]]) -> dict[str, Any]:
        container = {
            "name": name,
            "image": "img",
            "envFrom": [{"secretRef": {"name": "creds"}}],
            "env": extra_env,
        }
        return {"spec": {"restartPolicy": "Never", "containers": [container]}}

    return {
        "rayVersion": "2.60.0",
        "headGroupSpec": {
            "rayStartParams": {},
            "template": pod("ray-head", [{"name": "POD", "value": "head"}]),
        },
        "workerGroupSpecs": [
            {
                "groupName": "gpu",
                "replicas": 2,
                "minReplicas": 1,
                "maxReplicas": 3,
                "rayStartParams": {},
                "template": pod("ray-worker", [{"name": "POD", "value": "worker"}]),
            }
        ],
    }


@pytest.fixture
def api(kube) -> Api:
    api = Api(kube, kube.new_namespace("kr"))
    secret = {"SECRET_KEY": base64.b64encode(b"from-secret").decode()}
    api.core.create_namespaced_secret(
        api.ns, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "data": secret}
    )
    return api


@pytest.fixture
def standin(kube, api: Api, tmp_path: Path) -> Iterator[KubeRayStandIn]:
    # The address is only passed on; these entrypoints never connect to Ray.
    kr = KubeRayStandIn(kube, api.ns, "127.0.0.1:1", tmp_path / "kuberay", poll_s=0.1).start()
    yield kr
    kr.stop()
    assert not kr.errors, kr.errors


DUMP_ENV = (
    "python -c 'import json, os; "
    'job = json.loads(os.environ["RAY_JOB_CONFIG_JSON_ENV_VAR"]); '
    'print(json.dumps({"driver": {k: os.environ.get(k) for k in '
    '("SECRET_KEY", "POD", "FROM_RUNTIME_ENV", "RAY_ADDRESS")}, '
    '"workers": job["runtime_env"]["env_vars"]}))\''
)


def test_a_job_that_succeeds_goes_through_kuberays_states(api: Api, standin: KubeRayStandIn) -> None:
    api.create("ok", DUMP_ENV)
    st = api.wait("ok", "Complete")
    assert (st["jobStatus"], st["succeeded"], st["failed"]) == ("SUCCEEDED", 1, 0)
    assert st["message"] == "Job finished successfully." and "reason" not in st
    assert st["jobId"].startswith("ok-") and len(st["jobId"]) == len("ok-") + 5
    assert st["startTime"] <= st["endTime"] and st["rayJobInfo"]["startTime"]
    assert "dashboardURL" not in st  # no dashboard here, and the stand-in does not pretend

    # The RayCluster KubeRay would create: named in the status, owned by the RayJob, from its spec.
    cluster = api.get("rayclusters", st["rayClusterName"])
    job = api.get("rayjobs", "ok")
    assert st["rayClusterName"].startswith("ok-")
    assert cluster["spec"] == job["spec"]["rayClusterSpec"]
    assert cluster["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert cluster["metadata"]["labels"] == {
        "app": "standin-test",
        "ray.io/originated-from-cr-name": "ok",
        "ray.io/originated-from-crd": "RayJob",
    }
    assert cluster["status"]["state"] == "ready"
    assert (cluster["status"]["desiredWorkerReplicas"], cluster["status"]["maxWorkerReplicas"]) == (2, 3)
    assert st["rayClusterStatus"]["state"] == "ready"

    # Driver: head pod env + runtime env; Ray workers of the job: worker pod env + runtime env.
    out = json.loads(standin.log("ok").strip().splitlines()[-1])
    assert out["driver"] == {
        "SECRET_KEY": "from-secret",
        "POD": "head",
        "FROM_RUNTIME_ENV": "rt-value",
        "RAY_ADDRESS": "127.0.0.1:1",
    }
    assert out["workers"] == {"SECRET_KEY": "from-secret", "POD": "worker", "FROM_RUNTIME_ENV": "rt-value"}


def test_a_failing_entrypoint_fails_with_app_failed(api: Api, standin: KubeRayStandIn) -> None:
    api.create("bad", "echo about to fail; exit 3")
    st = api.wait("bad", "Failed")
    assert (st["jobStatus"], st["reason"], st["failed"], st["succeeded"]) == ("FAILED", "AppFailed", 1, 0)
    assert st["message"].startswith("Job entrypoint command failed with exit code 3, last available logs")
    assert "about to fail" in st["message"]


def test_killing_the_driver_fails_the_job(api: Api, standin: KubeRayStandIn) -> None:
    api.create("victim", "sleep 60")
    wait_for(lambda: api.status("victim").get("jobStatus") == "RUNNING", 30, "RUNNING", every=0.1)
    standin.kill_driver("victim")
    st = api.wait("victim", "Failed")
    assert st["reason"] == "AppFailed" and "exit code -9" in st["message"]


def test_suspend_stops_the_job_and_unsuspend_starts_a_new_one(api: Api, standin: KubeRayStandIn) -> None:
    api.create("nap", "sleep 60")
    first = wait_for(
        lambda: (s := api.status("nap")).get("jobStatus") == "RUNNING" and s, 30, "RUNNING", every=0.1
    )
    process = standin.jobs["nap"].proc
    api.patch_spec("nap", suspend=True)
    st = api.wait("nap", "Suspended")
    assert process.poll() is not None  # the Ray job is gone with its cluster
    for key in ("jobStatus", "jobId", "rayClusterName", "message", "reason"):
        assert key not in st, (key, st)
    assert api.get("rayclusters", first["rayClusterName"]) is None

    api.patch_spec("nap", suspend=False)  # -> New -> a fresh cluster and job id
    second = wait_for(
        lambda: (s := api.status("nap")).get("jobStatus") == "RUNNING" and s, 30, "RUNNING", every=0.1
    )
    assert second["jobId"] != first["jobId"] and second["rayClusterName"] != first["rayClusterName"]
    assert [job_id for name, job_id in standin.submissions if name == "nap"] == [
        first["jobId"],
        second["jobId"],
    ]

    process = standin.jobs["nap"].proc
    api.custom.delete_namespaced_custom_object("ray.io", "v1", api.ns, "rayjobs", "nap")
    wait_for(lambda: process.poll() is not None, 30, "the deleted RayJob's process to end", every=0.1)


def test_active_deadline_and_backoff_limit(api: Api, standin: KubeRayStandIn) -> None:
    api.create("slow", "sleep 60", activeDeadlineSeconds=1)
    st = api.wait("slow", "Failed")
    assert st["reason"] == "DeadlineExceeded" and "activeDeadlineSeconds" in st["message"]

    api.create("flaky", "exit 1", backoffLimit=1)  # one retry: Failed -> Retrying -> New -> ... -> Failed
    st = wait_for(
        lambda: (
            (s := api.status("flaky")).get("jobDeploymentStatus") == "Failed" and s.get("failed") == 2 and s
        ),
        30,
        "the retry to fail too",
        every=0.1,
    )
    job_ids = [job_id for name, job_id in standin.submissions if name == "flaky"]
    assert len(job_ids) == 2 and len(set(job_ids)) == 2 and st["jobId"] == job_ids[-1]


def test_environment_is_not_taken_from_the_test_process(api: Api, standin: KubeRayStandIn) -> None:
    """Only what a pod would have: the stand-in adds no AWS or MLflow settings of its own."""
    os.environ["SPHINXX_STANDIN_PROBE"] = "leaked"
    try:
        api.create("env", "echo probe=${SPHINXX_STANDIN_PROBE:-absent}")
        api.wait("env", "Complete")
    finally:
        del os.environ["SPHINXX_STANDIN_PROBE"]
    assert "probe=absent" in standin.log("env")
