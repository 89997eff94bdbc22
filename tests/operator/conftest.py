"""Fixtures for the operator tests that run `sphinxx operator run` against kmock over HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.services.operator import OperatorServer, start_operator

GROUP, VERSION = "sphinxx.dev", "v1alpha1"


@pytest.fixture(scope="module")
def operator_server(kube, s3_server, tmp_path_factory) -> Iterator[OperatorServer]:
    server = start_operator(tmp_path_factory.mktemp("operator"), kube, env=s3_server.env)
    yield server
    server.process.stop()


class Cluster:
    """What a test needs to look at and poke the API as users and KubeRay would."""

    def __init__(self, kube, namespace: str):
        self.kube = kube
        self.ns = namespace
        self.api = client.CustomObjectsApi(kube.api_client())
        self.core = client.CoreV1Api(self.api.api_client)

    def get(
        self, plural: str, name: str, group: str = GROUP, version: str = VERSION
    ) -> dict[str, Any] | None:
        try:
            return self.api.get_namespaced_custom_object(group, version, self.ns, plural, name)
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def list(
        self, plural: str, group: str = GROUP, version: str = VERSION, labels: str | None = None
    ) -> list[dict]:
        items = self.api.list_namespaced_custom_object(group, version, self.ns, plural, label_selector=labels)
        return items["items"]

    def runs(self) -> dict[str, dict]:
        return {r["metadata"]["name"]: r for r in self.list("trainingruns")}

    def rayjobs(self, run: str | None = None) -> dict[str, dict]:
        labels = f"sphinxx.dev/trainingrun={run}" if run else None
        return {j["metadata"]["name"]: j for j in self.list("rayjobs", "ray.io", "v1", labels)}

    def status(self, plural: str, name: str) -> dict[str, Any]:
        return (self.get(plural, name) or {}).get("status") or {}

    def patch(self, plural: str, name: str, body: dict, group: str = GROUP, version: str = VERSION) -> dict:
        return self.api.patch_namespaced_custom_object(group, version, self.ns, plural, name, body)

    def drive(self, rayjob: str, **fields: Any) -> None:
        """Write RayJob status the way KubeRay does (its field names and values)."""
        self.api.patch_namespaced_custom_object_status(
            "ray.io", "v1", self.ns, "rayjobs", rayjob, {"status": fields}
        )

    def events(self, name: str) -> list[tuple[str, str, str]]:
        items = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items
        return [(e.type, e.reason, e.message) for e in items]


@pytest.fixture
def cluster(kube) -> Iterator[Cluster]:
    """A fresh namespace; emptied afterwards so later tests do not pay for this one's timers."""
    cluster = Cluster(kube, kube.new_namespace("op"))
    yield cluster
    for plural, group, version in (
        ("scalingsweeps", GROUP, VERSION),
        ("trainingruns", GROUP, VERSION),
        ("rayjobs", "ray.io", "v1"),
        ("rayclusters", "ray.io", "v1"),
    ):
        for obj in cluster.list(plural, group, version):
            name = obj["metadata"]["name"]
            try:  # drop finalizers first: the objects go at once, whatever the operator is doing
                cluster.patch(plural, name, {"metadata": {"finalizers": None}}, group, version)
                cluster.api.delete_namespaced_custom_object(group, version, cluster.ns, plural, name)
            except client.ApiException as err:
                if err.status != 404:
                    raise


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll until `check()` returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def stays(check: Callable[[], Any], seconds: float = 1.5) -> None:
    """Assert `check()` stays truthy for a while (e.g. nothing extra gets created)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), "condition stopped holding"
        time.sleep(0.2)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
