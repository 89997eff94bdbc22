"""The chart renders, lints clean and yields valid Kubernetes objects for every important toggle.

Objects are validated with kubernetes-validate (the upstream OpenAPI schemas, strict: unknown
fields are errors). Only the kopf peering objects have no upstream schema; they are named, so
nothing is skipped silently. The operator's command line in the Deployment is parsed with the
real `sphinxx` parser, so the chart cannot drift from `sphinxx operator run`.
"""

from __future__ import annotations

import shlex
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from sphinxx.cli import build_parser

from .conftest import CHART_DIR, NAMESPACE, RELEASE, Rendered

KUBE_VERSION = "1.32.0"
NO_UPSTREAM_SCHEMA = {"ClusterKopfPeering", "KopfPeering"}  # kopf.dev/v1, CRDs in the chart's crds/

TOGGLES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"operator": {"watchNamespaces": ["team-a", "team-b"]}},
    "peering": {"replicaCount": 3},
    "peering-namespaced": {"replicaCount": 2, "operator": {"watchNamespaces": ["team-a"]}},
    "s3-and-tracking": {
        "s3": {
            "bucket": "ml-ckpt",
            "endpointUrl": "http://minio.storage:9000",
            "credentialsSecret": "s3-creds",
        },
        "mlflow": {"trackingUri": "http://mlflow.mlflow:5000", "credentialsSecret": "mlflow-creds"},
        "runtime": {
            "gpuNodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "queueName": "gpu-queue",
        },
        "rbac": {"secretNames": ["s3-creds", "mlflow-creds"]},
    },
    "mlflow-server-postgresql": {
        "s3": {"bucket": "ml-ckpt"},
        "mlflow": {
            "server": {"enabled": True, "postgresql": {"enabled": True, "passwordSecret": "mlflow-pg"}}
        },
    },
    "mlflow-server-external-db": {
        "mlflow": {
            "server": {
                "enabled": True,
                "artifactsDestination": "s3://art/mlflow",
                "backendStore": {"existingSecret": "mlflow-db"},
            }
        },
    },
    "networkpolicy": {
        "networkPolicy": {"enabled": True},
        "mlflow": {"server": {"enabled": True}},
        "s3": {"bucket": "ml-ckpt"},
    },
    "minimal": {
        "rbac": {"create": False, "userRoles": False},
        "serviceAccount": {"create": False, "name": "ops"},
    },
}


@pytest.fixture(scope="module", params=sorted(TOGGLES))
def toggled(request: pytest.FixtureRequest, render) -> tuple[str, Rendered]:
    # The MLflow server toggles need a backend secret; merged here to keep TOGGLES readable.
    values = TOGGLES[request.param]
    server = values.get("mlflow", {}).get("server", {})
    if server.get("enabled") and not server.get("postgresql") and not server.get("backendStore"):
        values = {**values, "mlflow": {"server": {**server, "backendStore": {"existingSecret": "mlflow-db"}}}}
    return request.param, render(values)


def test_lint_is_clean_with_defaults_and_toggles() -> None:
    for name, values in TOGGLES.items():
        if name.startswith("networkpolicy"):
            values = {
                **values,
                "mlflow": {"server": {"enabled": True, "backendStore": {"existingSecret": "db"}}},
            }
        report = helm.lint(
            str(CHART_DIR), values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
        )
        assert report["errors"] == [], (name, report)
        # Severity 1 is "info" (e.g. "icon is recommended"); warnings and errors fail.
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], (name, report["messages"])


def test_objects_validate_against_kubernetes_schemas(toggled: tuple[str, Rendered]) -> None:
    name, rendered = toggled
    assert rendered.objects, name
    for template, obj in rendered.objects:
        if obj["kind"] in NO_UPSTREAM_SCHEMA:
            assert obj["apiVersion"] == "kopf.dev/v1" and set(obj) == {"apiVersion", "kind", "metadata"}
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(
                f"{name}: {template} {obj['kind']}/{obj['metadata']['name']}: "
                f"{err.message} at {list(err.path)}"
            )


def test_one_kind_per_template(toggled: tuple[str, Rendered]) -> None:
    name, rendered = toggled
    kinds: dict[str, set[str]] = {}
    for template, obj in rendered.objects:
        kinds.setdefault(template, set()).add(obj["kind"])
    assert {t: k for t, k in kinds.items() if len(k) > 1} == {}, name


def test_namespaced_objects_land_in_the_release_namespace(toggled: tuple[str, Rendered]) -> None:
    name, rendered = toggled
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "ClusterKopfPeering"}
    watched = set(TOGGLES[name].get("operator", {}).get("watchNamespaces", []))
    for _, obj in rendered.objects:
        ns = obj["metadata"].get("namespace")
        if obj["kind"] in cluster_scoped:
            assert ns is None, obj["metadata"]
        elif obj["kind"] in {"Role", "RoleBinding", "KopfPeering"}:
            assert ns in watched, obj["metadata"]
        else:
            assert ns == NAMESPACE, obj["metadata"]


def _operator(rendered: Rendered) -> dict[str, Any]:
    deployment = rendered.one("Deployment", RELEASE)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_operator_command_parses_with_the_real_cli(toggled: tuple[str, Rendered]) -> None:
    name, rendered = toggled
    container = _operator(rendered)
    assert container["command"] == ["sphinxx"]
    try:
        args = build_parser().parse_args(container["args"])
    except SystemExit:
        pytest.fail(f"{name}: `sphinxx {shlex.join(container['args'])}` does not parse")
    assert (args.group, args.operator_command) == ("operator", "run")
    assert args.func.__name__ == "cmd_run"
    watched = TOGGLES[name].get("operator", {}).get("watchNamespaces", [])
    assert args.namespace == watched and args.all_namespaces == (not watched)
    assert args.log_format == "json"
    port = container["ports"][0]["containerPort"]
    assert args.liveness == f"http://0.0.0.0:{port}/healthz"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_one_replica_is_standalone_and_recreated(render) -> None:
    rendered = render({})
    deployment = rendered.one("Deployment", RELEASE)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    args = build_parser().parse_args(_operator(rendered)["args"])
    assert args.standalone and args.peering is None
    assert rendered.kinds("ClusterKopfPeering") == []


def test_several_replicas_use_kopf_peering(render) -> None:
    rendered = render({"replicaCount": 3})
    deployment = rendered.one("Deployment", RELEASE)
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    container = _operator(rendered)
    args = build_parser().parse_args(container["args"])
    assert not args.standalone and args.peering == RELEASE
    peering = rendered.one("ClusterKopfPeering")
    assert peering["metadata"]["name"] == args.peering
    # kopf names peers by POD_ID; the pod name makes `kubectl get clusterkopfpeering -o yaml` readable.
    assert _env(container)["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_namespaced_peering_has_one_peering_object_per_namespace(render) -> None:
    rendered = render({"replicaCount": 2, "operator": {"watchNamespaces": ["team-a", "team-b"]}})
    peerings = rendered.kinds("KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]


def test_pod_security_is_non_root_with_a_read_only_root(toggled: tuple[str, Rendered]) -> None:
    name, rendered = toggled
    for kind in ("Deployment", "StatefulSet"):
        for workload in rendered.kinds(kind):
            pod = workload["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, (name, workload["metadata"]["name"])
            for container in pod["containers"]:
                ctx = container["securityContext"]
                assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
                assert ctx["capabilities"]["drop"] == ["ALL"]
                mounts = {m["mountPath"] for m in container["volumeMounts"]}
                assert "/tmp" in mounts, "a read-only root needs a writable /tmp"


def test_settings_and_secrets_reach_the_operator(render) -> None:
    rendered = render(TOGGLES["s3-and-tracking"])
    container = _operator(rendered)
    args = build_parser().parse_args(container["args"])
    assert args.tracking_uri == "http://mlflow.mlflow:5000"
    assert args.image == f"ghcr.io/sphinxx/sphinxx:{_app_version()}-gpu"
    env = _env(container)
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
    assert env["SPHINXX_STORAGE_PREFIX"] == "s3://ml-ckpt/sphinxx"
    assert env["SPHINXX_QUEUE_NAME"] == "gpu-queue"
    # Credentials only by reference: no secret value is rendered anywhere.
    assert container["envFrom"] == [
        {"secretRef": {"name": "s3-creds"}},
        {"secretRef": {"name": "mlflow-creds"}},
    ]
    assert env["SPHINXX_ENV_FROM_SECRETS"] == "s3-creds,mlflow-creds"
    assert rendered.kinds("Secret") == []


def test_runtime_image_defaults_to_the_gpu_build_of_the_operator_image(render) -> None:
    rendered = render({"image": {"tag": "1.2.3"}})
    container = _operator(rendered)
    assert container["image"] == "ghcr.io/sphinxx/sphinxx:1.2.3"
    same = build_parser().parse_args(container["args"])
    assert same.image == "ghcr.io/sphinxx/sphinxx:1.2.3-gpu"
    gpu = build_parser().parse_args(
        _operator(render({"runtime": {"image": "reg/sphinxx:1.2.3-gpu"}}))["args"]
    )
    assert gpu.image == "reg/sphinxx:1.2.3-gpu"


def test_bundled_mlflow_server_is_the_default_tracking_uri(render) -> None:
    rendered = render(TOGGLES["mlflow-server-postgresql"])
    service = rendered.one("Service", "-mlflow")
    port = service["spec"]["ports"][0]["port"]
    uri = f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{port}"
    assert build_parser().parse_args(_operator(rendered)["args"]).tracking_uri == uri
    server = rendered.one("Deployment", "-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "--artifacts-destination=s3://ml-ckpt/sphinxx/mlflow-artifacts" in server["args"]
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in server["args"]
    backend = _env(server)["MLFLOW_BACKEND_STORE_URI"]
    pg = rendered.one("Service", "-postgresql")["metadata"]["name"]
    assert backend == f"postgresql://mlflow:$(PGPASSWORD)@{pg}:5432/mlflow"
    # Kubernetes expands $(PGPASSWORD) only when it is defined earlier in the same env list.
    names = [e["name"] for e in server["env"]]
    assert names.index("PGPASSWORD") < names.index("MLFLOW_BACKEND_STORE_URI")
    # The server's own Service name must pass MLflow's Host-header check.
    hosts = next(a for a in server["args"] if a.startswith("--allowed-hosts="))
    assert f"{service['metadata']['name']}.{NAMESPACE}.svc*" in hosts.split("=", 1)[1].split(",")
    statefulset = rendered.one("StatefulSet", "-postgresql")
    assert statefulset["spec"]["serviceName"] == pg


def test_network_policy_allows_dns_api_and_mlflow_only(render) -> None:
    rendered = render(
        TOGGLES["networkpolicy"]
        | {"mlflow": {"server": {"enabled": True, "backendStore": {"existingSecret": "db"}}}}
    )
    policy = rendered.one("NetworkPolicy")
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == rendered.one("Deployment", RELEASE)["spec"]["selector"]["matchLabels"]
    )
    ports = sorted(
        (p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule.get("ports", [])
    )
    assert ports == [("TCP", 53), ("TCP", 443), ("TCP", 5000), ("TCP", 6443), ("UDP", 53)]
    assert render({}).kinds("NetworkPolicy") == []


def test_toggles_off_render_no_rbac_or_service_account(render) -> None:
    rendered = render(TOGGLES["minimal"])
    kinds = {obj["kind"] for _, obj in rendered.objects}
    assert kinds == {"Deployment"}
    pod = rendered.one("Deployment", RELEASE)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ops"


def test_notes_tell_the_next_commands(render) -> None:
    notes = render({}).notes
    assert "kubectl apply -f examples/sweeps/sphinx-x-family.yaml" in notes
    assert "kubectl get scalingsweeps -w" in notes
    assert "ops_runbooks/" in notes
    assert f"deployment/{RELEASE}" in notes
    assert "WARNING: s3.bucket is empty" in notes
    assert (
        "WARNING"
        not in render({"s3": {"bucket": "ml-ckpt"}, "mlflow": {"trackingUri": "http://m:5000"}}).notes
    )


def _app_version() -> str:
    import yaml

    return yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"]
