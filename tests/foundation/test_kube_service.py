"""The Kubernetes API emulator behaves like an API server for kubectl and the Python client.

Only the kubeconfig is shared with the clients, as it would be for a real cluster. The expected
behaviour is the API server's documented one (status codes, metadata, subresources), not
whatever the emulator happens to do.
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

GROUP, VERSION, PLURAL = "sphinxx.dev", "v1alpha1", "trainingruns"


def _run(name: str, namespace: str, **spec) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingRun",
        "metadata": {"name": name, "namespace": namespace, "labels": {"team": "scaling"}},
        "spec": {"minWorkers": 1, **spec},
    }


@pytest.fixture
def api(kube) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube.api_client())


def test_kubectl_create_list_get_patch(kube) -> None:
    ns = kube.new_namespace()
    assert "created" in kube.apply(_run("alpha", ns))
    assert "unchanged" in kube.apply(_run("alpha", ns))
    listed = kube.get_json("trun", "-n", ns)
    assert [item["metadata"]["name"] for item in listed["items"]] == ["alpha"]

    obj = kube.get_json("trainingrun", "alpha", "-n", ns)
    meta = obj["metadata"]
    assert meta["namespace"] == ns and meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"]

    kube.kubectl("patch", "trun", "alpha", "-n", ns, "--type", "merge", "-p", '{"spec":{"minWorkers":2}}')
    patched = kube.get_json("trun", "alpha", "-n", ns)
    assert patched["spec"]["minWorkers"] == 2
    assert patched["metadata"]["generation"] == 2
    assert int(patched["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    # A real API server refuses strategic merge patches on custom resources; so does the emulator.
    refused = kube.kubectl("patch", "trun", "alpha", "-n", ns, "-p", '{"spec":{"minWorkers":3}}', check=False)
    assert refused.returncode != 0 and "not supported" in refused.stderr

    kube.kubectl("annotate", "trun", "alpha", "-n", ns, "sphinxx.dev/resume=now", "--overwrite")
    annotated = kube.get_json("trun", "alpha", "-n", ns)
    assert annotated["metadata"]["annotations"]["sphinxx.dev/resume"] == "now"
    assert annotated["metadata"]["generation"] == 2  # metadata edits do not bump the generation

    assert kube.get_json("trun", "-n", ns, "-l", "team=scaling")["items"]
    assert not kube.get_json("trun", "-n", ns, "-l", "team=other")["items"]
    kube.kubectl("delete", "trun", "alpha", "-n", ns)
    assert not kube.get_json("trun", "-n", ns)["items"]


def test_kubectl_wait_sees_status_through_a_watch(kube, api) -> None:
    ns = kube.new_namespace()
    kube.apply(_run("waiter", ns))
    waiter = subprocess.Popen(
        [
            "kubectl",
            "wait",
            "trun/waiter",
            "-n",
            ns,
            "--for=jsonpath={.status.phase}=Running",
            "--timeout=30s",
        ],
        env={**__import__("os").environ, **kube.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # let kubectl reach its watch before the change
    api.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, "waiter", {"status": {"phase": "Running"}}
    )
    out, err = waiter.communicate(timeout=40)
    assert waiter.returncode == 0, err
    assert "condition met" in out


def test_python_client_create_get_list_patch(api) -> None:
    ns = "py-" + str(time.time_ns())[-8:]
    created = api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _run("beta", ns))
    assert created["metadata"]["name"] == "beta"  # 201 with the object (kmock alone answers 200)
    with pytest.raises(ApiException) as conflict:
        api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _run("beta", ns))
    assert conflict.value.status == 409

    listed = api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
    assert listed["kind"] == "TrainingRunList" and listed["apiVersion"] == f"{GROUP}/{VERSION}"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["beta"]

    # Status lives behind its subresource: the main path ignores it, /status changes only it.
    main = api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "beta", {"status": {"phase": "X"}})
    assert "status" not in main and main["metadata"]["generation"] == 1
    status = api.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, "beta", {"status": {"phase": "Running"}, "spec": {"minWorkers": 9}}
    )
    assert status["status"] == {"phase": "Running"}
    assert status["spec"]["minWorkers"] == 1 and status["metadata"]["generation"] == 1

    spec = api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "beta", {"spec": {"minWorkers": 4}})
    assert spec["metadata"]["generation"] == 2 and spec["status"] == {"phase": "Running"}
    assert api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "beta")["spec"]["minWorkers"] == 4

    with pytest.raises(ApiException) as missing:
        api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "nope")
    assert missing.value.status == 404


def test_json_patch_test_operation_answers_422(api) -> None:
    ns = "jp-" + str(time.time_ns())[-8:]
    obj = api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _run("gamma", ns))
    version = obj["metadata"]["resourceVersion"]
    ok = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": version},
        {"op": "add", "path": "/metadata/finalizers", "value": ["sphinxx.dev/finalizer"]},
    ]
    json_patch = {"_content_type": "application/json-patch+json"}
    patched = api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "gamma", ok, **json_patch)
    assert patched["metadata"]["finalizers"] == ["sphinxx.dev/finalizer"]
    with pytest.raises(ApiException) as stale:  # the same test against the old version now fails
        api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "gamma", ok, **json_patch)
    assert stale.value.status == 422


def test_finalizers_hold_deletion_and_owners_collect_children(api) -> None:
    ns = "fin-" + str(time.time_ns())[-8:]
    parent = api.create_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        PLURAL,
        {**_run("parent", ns), "metadata": {"name": "parent", "finalizers": ["x/y"]}},
    )
    owner = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingRun",
        "name": "parent",
        "uid": parent["metadata"]["uid"],
    }
    child = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "child", "ownerReferences": [owner]},
        "spec": {"entrypoint": "true"},
    }
    api.create_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", child)

    api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "parent")
    held = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "parent")
    assert held["metadata"]["deletionTimestamp"]
    assert api.list_namespaced_custom_object("ray.io", "v1", ns, "rayjobs")["items"]

    api.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "parent", {"metadata": {"finalizers": None}}
    )
    with pytest.raises(ApiException) as gone:
        api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "parent")
    assert gone.value.status == 404
    assert not api.list_namespaced_custom_object("ray.io", "v1", ns, "rayjobs")["items"]


def test_python_client_watch_streams_changes(api) -> None:
    ns = "w-" + str(time.time_ns())[-8:]
    api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _run("delta", ns))
    listed = api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
    seen: list[tuple[str, str, int]] = []

    def consume() -> None:
        stream = watch.Watch().stream(
            api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            ns,
            PLURAL,
            resource_version=listed["metadata"]["resourceVersion"],
            timeout_seconds=5,
        )
        for event in stream:
            obj = event["object"]
            seen.append((event["type"], obj["metadata"]["name"], obj["spec"]["minWorkers"]))
            if event["type"] == "DELETED":
                return

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.5)
    api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "delta", {"spec": {"minWorkers": 2}})
    api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "delta")
    thread.join(10)
    # Resumed from the list's resourceVersion: no replayed ADDED, then the two changes in order.
    assert seen == [("MODIFIED", "delta", 2), ("DELETED", "delta", 2)]


def test_applied_crd_registers_resource_with_printer_columns(kube) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.dev"},
        "spec": {
            "group": "example.dev",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wdg"]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                        },
                    ],
                }
            ],
        },
    }
    kube.apply(crd)
    ns = kube.new_namespace()
    widget = {
        "apiVersion": "example.dev/v1",
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"size": 3},
    }
    kube.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(widget))
    kube.kubectl(
        "patch", "wdg", "w1", "-n", ns, "--subresource=status", "--type=merge",
        "-p", '{"status":{"phase":"Up","conditions":[{"type":"Ready","status":"True"}]}}',
    )  # fmt: skip
    table = kube.kubectl("get", "wdg", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "SIZE", "READY"]
    assert table[1].split() == ["w1", "Up", "3", "True"]


def test_metrics_count_requests_by_verb_and_resource(kube, api) -> None:
    """`/metrics` has `apiserver_request_total` as a real API server does (what bench/operator.py reads)."""
    import re
    import urllib.request

    def totals() -> dict[tuple[str, str, str], int]:
        text = urllib.request.urlopen(f"{kube.url}/metrics", timeout=10).read().decode()
        found = re.findall(
            r'apiserver_request_total\{verb="(\w+)",resource="(\w+)",subresource="(\w*)"\} (\d+)', text
        )
        return {(verb, res, sub): int(n) for verb, res, sub, n in found}

    ns = kube.new_namespace()
    before = totals()
    api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _run("counted", ns))
    api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
    api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "counted")
    api.patch_namespaced_custom_object_status(
        GROUP, VERSION, ns, PLURAL, "counted", {"status": {"phase": "x"}}
    )
    after = totals()
    delta = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    assert {k: v for k, v in delta.items() if v} == {
        ("POST", PLURAL, ""): 1,
        ("LIST", PLURAL, ""): 1,
        ("GET", PLURAL, ""): 1,
        ("PATCH", PLURAL, "status"): 1,
    }
