"""`sphinxx doctor` / `kubectl sphinxx doctor` against an emulated cluster (kmock), moto S3 and a real
MLflow server: a healthy cluster gives all PASS, and each failure planted in turn gives its line.

The operator's Deployment is the one the Helm chart renders (helm-python-sdk), so the doctor reads
the settings the chart really gives the operator. The emulator runs no controllers: the test
writes the Deployment's and pods' status, and the nodes' allocatable GPUs, as kubelet and the
controllers would.
"""

from __future__ import annotations

import base64
import copy
import datetime
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from sphinxx.cli import main as sphinxx_main
from sphinxx.operator import crds, doctor
from sphinxx.operator.doctor import Level, OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SECRET = "sphinxx-s3"
NODE = "gpu-node-doctor"
MERGE = (
    "application/merge-patch+json"  # what the emulator takes besides JSON patch (as for a custom resource)
)

pytestmark = pytest.mark.slow  # servers in processes (kmock, moto, MLflow)


def _kuberay_crd(plural: str, kind: str, versions: tuple[str, ...] = ("v1",)) -> dict[str, Any]:
    """KubeRay's CRD as far as the doctor reads it: its name and served versions."""
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.ray.io"},
        "spec": {
            "group": "ray.io",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": v,
                    "served": True,
                    "storage": i == 0,
                    "schema": schema,
                    "subresources": {"status": {}},
                }
                for i, v in enumerate(versions)
            ],
        },
    }


class Cluster:
    """The emulated cluster as an admin and the controllers would change it."""

    def __init__(self, kube, s3_server, mlflow_server, tmp: Path):
        self.kube = kube
        api = kube.api_client()
        self.ext = client.ApiextensionsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.s3 = s3_server
        self.op_ns = kube.new_namespace("doctor-op")
        self.ns = kube.new_namespace("doctor")
        self.bucket = s3_server.new_bucket("doctor")
        self.values = {
            "s3": {"bucket": self.bucket, "endpointUrl": s3_server.endpoint_url, "credentialsSecret": SECRET},
            "mlflow": {"trackingUri": mlflow_server.tracking_uri},
        }
        self.deployment = self.render()
        self.sweep = tmp / "sweep.yaml"

    def render(self) -> dict[str, Any]:
        import helm_python as helm  # the chart, rendered as `helm install` would (Helm v4 in-process)

        with helm.Chart.load(str(ROOT / "helm" / "sphinxx")) as chart:
            files = chart.render(self.values, name="sphinxx", namespace=self.op_ns, is_install=True)
        docs = [
            d for path, text in files.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d
        ]
        return next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "sphinxx")

    # -- objects

    def put_crd(self, body: dict[str, Any]) -> None:
        self.delete_crd(body["metadata"]["name"])
        self.ext.create_custom_resource_definition(body)

    def delete_crd(self, name: str) -> None:
        try:
            self.ext.delete_custom_resource_definition(name)
        except client.ApiException as err:
            if err.status != 404:
                raise

    def put_operator(self, deployment: dict[str, Any], ready: int = 1, pod_state: dict | None = None) -> None:
        self.delete_operator()
        self.apps.create_namespaced_deployment(self.op_ns, deployment)
        name = deployment["metadata"]["name"]
        replicas = deployment["spec"]["replicas"]
        self.apps.patch_namespaced_deployment_status(
            name, self.op_ns, {"status": {"replicas": replicas, "readyReplicas": ready}}, _content_type=MERGE
        )
        labels = deployment["spec"]["selector"]["matchLabels"]
        pod = {
            "metadata": {"name": f"{name}-0", "labels": labels},
            "spec": deployment["spec"]["template"]["spec"],
        }
        self.core.create_namespaced_pod(self.op_ns, pod)
        state = pod_state or {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
        status = {"phase": "Running", "containerStatuses": [
            {"name": "operator", "ready": ready > 0, "restartCount": 0 if ready else 7, "state": state,
             "image": "x", "imageID": "", "containerID": ""}]}  # fmt: skip
        self.core.patch_namespaced_pod_status(
            f"{name}-0", self.op_ns, {"status": status}, _content_type=MERGE
        )

    def delete_operator(self) -> None:
        for call, name in (
            (self.apps.delete_namespaced_deployment, "sphinxx"),
            (self.core.delete_namespaced_pod, "sphinxx-0"),
        ):
            try:
                call(name, self.op_ns)
            except client.ApiException as err:
                if err.status != 404:
                    raise

    def put_secret(self, namespace: str) -> None:
        data = {k: base64.b64encode(v.encode()).decode() for k, v in self.s3.env.items() if "KEY" in k}
        self.core.create_namespaced_secret(namespace, {"metadata": {"name": SECRET}, "data": data})

    def set_gpus(self, count: int) -> None:
        allocatable = {"cpu": "64", "memory": "512Gi", doctor.GPU_RESOURCE: str(count)}
        self.core.patch_node_status(NODE, {"status": {"allocatable": allocatable}}, _content_type=MERGE)

    def healthy(self) -> None:
        for crd in crds.crds():
            self.put_crd(crd)
        self.put_crd(_kuberay_crd("rayjobs", "RayJob"))
        self.put_crd(_kuberay_crd("rayclusters", "RayCluster"))
        self.put_operator(self.deployment)
        for namespace in (self.op_ns, self.ns):
            self.put_secret(namespace)
        try:
            self.core.create_node({"metadata": {"name": NODE, "labels": {"nvidia.com/gpu.present": "true"}}})
        except client.ApiException as err:
            if err.status != 409:
                raise
        self.set_gpus(8)

    # -- the command

    def doctor(self, capsys, *extra: str) -> tuple[int, list[str]]:
        capsys.readouterr()
        argv = [
            "doctor",
            "--kubeconfig",
            str(self.kube.kubeconfig),
            "-n",
            self.ns,
            "--operator-namespace",
            self.op_ns,
        ]
        code = sphinxx_main([*argv, *extra])
        return code, capsys.readouterr().out.splitlines()


@pytest.fixture(scope="module")
def cluster(kube, s3_server, mlflow_server, tmp_path_factory) -> Iterator[Cluster]:
    """One healthy cluster for the module; each test plants one failure and undoes it."""
    c = Cluster(kube, s3_server, mlflow_server, tmp_path_factory.mktemp("doctor"))
    c.healthy()
    yield c
    c.delete_operator()
    c.core.delete_node(NODE)


def _line(lines: list[str], check: str) -> str:
    found = [line for line in lines if line.split("  ", 1)[-1].startswith(f"{check}:")]
    assert len(found) == 1, f"no single {check!r} line in:\n" + "\n".join(lines)
    return found[0]


def test_a_healthy_cluster_passes_every_check(cluster, capsys) -> None:
    code, lines = cluster.doctor(capsys)
    checks = [line for line in lines if line[:4] in ("PASS", "WARN", "FAIL")]
    assert code == 0, "\n".join(lines)
    assert checks and all(line.startswith("PASS") for line in checks), "\n".join(lines)
    for check in (
        "crd ScalingSweep",
        "crd TrainingRun",
        "kuberay",
        "operator",
        "peering",
        "gpus",
        "s3",
        "mlflow",
    ):
        assert _line(lines, check)
    assert "1 node(s), 8 allocatable nvidia.com/gpu (gpu-node-doctor=8)" in _line(lines, "gpus")
    assert f"s3://{cluster.bucket}/sphinxx" in _line(lines, "s3")
    assert "with the operator's credentials" in _line(lines, "s3")
    assert _line(lines, f"secret {cluster.ns}/{SECRET}").startswith("PASS")
    assert _line(lines, f"secret {cluster.op_ns}/{SECRET}").startswith("PASS")
    assert lines[-1] == f"{len(checks)} PASS, 0 WARN, 0 FAIL"


def test_kubectl_finds_the_plugin_and_runs_it(cluster) -> None:
    """`kubectl sphinxx doctor`: the installed `kubectl-sphinxx` on PATH, the kubeconfig kubectl uses."""
    env = {**os.environ, **cluster.kube.env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    argv = ["kubectl", "sphinxx", "doctor", "-n", cluster.ns, "--operator-namespace", cluster.op_ns]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"sweeps in namespace {cluster.ns}" in result.stdout
    assert "PASS  kuberay:" in result.stdout and "\nFAIL  " not in result.stdout


@contextmanager
def planted(undo: Callable[[], None]) -> Iterator[None]:
    try:
        yield
    finally:
        undo()


def _fails(cluster, capsys, check: str, *extra: str) -> str:
    code, lines = cluster.doctor(capsys, *extra)
    line = _line(lines, check)
    assert code == 1, "\n".join(lines)
    assert line.startswith("FAIL"), line
    assert " -> fix: " in line
    return line


def test_a_missing_crd_fails(cluster, capsys) -> None:
    with planted(lambda: cluster.put_crd(crds.crds()[0])):
        cluster.delete_crd("scalingsweeps.sphinxx.dev")
        line = _fails(cluster, capsys, "crd ScalingSweep")
    assert "scalingsweeps.sphinxx.dev is not installed" in line
    assert "kubectl apply --server-side --force-conflicts -f helm/sphinxx/crds/" in line


def test_an_older_crd_fails_naming_what_it_lacks(cluster, capsys) -> None:
    current = crds.crds()[1]
    old = copy.deepcopy(current)
    spec = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["properties"]["queueName"]
    with planted(lambda: cluster.put_crd(current)):
        cluster.put_crd(old)
        line = _fails(cluster, capsys, "crd TrainingRun")
    assert "lacks 1 field(s) this sphinxx has (spec.queueName)" in line


def test_no_rayjob_crd_or_an_old_kuberay_fails(cluster, capsys) -> None:
    with planted(lambda: cluster.put_crd(_kuberay_crd("rayjobs", "RayJob"))):
        cluster.delete_crd("rayjobs.ray.io")
        line = _fails(cluster, capsys, "kuberay")
        assert (
            "no rayjobs.ray.io: KubeRay is not installed" in line and "helm upgrade --install kuberay" in line
        )
        cluster.put_crd(_kuberay_crd("rayjobs", "RayJob", ("v1alpha1",)))
        line = _fails(cluster, capsys, "kuberay")
        assert "rayjobs.ray.io serves v1alpha1; the operator creates ray.io/v1" in line


def test_no_operator_or_a_crashing_one_fails(cluster, capsys) -> None:
    with planted(lambda: cluster.put_operator(cluster.deployment)):
        cluster.delete_operator()
        line = _fails(cluster, capsys, "operator")
        assert f"no sphinxx operator Deployment in namespace {cluster.op_ns}" in line
        crash = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}
        cluster.put_operator(cluster.deployment, ready=0, pod_state=crash)
        line = _fails(cluster, capsys, "operator")
        assert f"{cluster.op_ns}/sphinxx has 0/1 ready; pods: CrashLoopBackOff" in line
        assert f"kubectl -n {cluster.op_ns} logs deploy/sphinxx" in line


def test_no_gpu_nodes_fails(cluster, capsys) -> None:
    with planted(lambda: cluster.set_gpus(8)):
        cluster.set_gpus(0)
        line = _fails(cluster, capsys, "gpus")
    assert "no schedulable node has allocatable nvidia.com/gpu" in line and "GPU Operator" in line


def test_a_missing_secret_in_the_sweep_namespace_fails(cluster, capsys) -> None:
    with planted(lambda: cluster.put_secret(cluster.ns)):
        cluster.core.delete_namespaced_secret(SECRET, cluster.ns)
        line = _fails(cluster, capsys, f"secret {cluster.ns}/{SECRET}")
    assert "missing (envFrom of the Ray pods" in line
    assert f"kubectl -n {cluster.ns} create secret generic {SECRET}" in line


def test_a_missing_bucket_or_an_unreachable_store_fails(cluster, capsys) -> None:
    s3 = cluster.s3.client()
    with planted(lambda: s3.create_bucket(Bucket=cluster.bucket)):
        s3.delete_bucket(Bucket=cluster.bucket)
        line = _fails(cluster, capsys, "s3")
        assert f"s3://{cluster.bucket}/sphinxx at {cluster.s3.endpoint_url}" in line and "bucket" in line
    unreachable = copy.deepcopy(cluster.deployment)
    env = unreachable["spec"]["template"]["spec"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "AWS_ENDPOINT_URL")["value"] = "http://127.0.0.1:9"
    with planted(lambda: cluster.put_operator(cluster.deployment)):
        cluster.put_operator(unreachable)
        line = _fails(cluster, capsys, "s3")
    assert "at http://127.0.0.1:9" in line and "EndpointConnectionError" in line


def test_mlflow_down_fails(cluster, capsys) -> None:
    down = copy.deepcopy(cluster.deployment)
    args = down["spec"]["template"]["spec"]["containers"][0]["args"]
    args[:] = [a for a in args if not a.startswith("--tracking-uri=")] + ["--tracking-uri=http://127.0.0.1:9"]
    with planted(lambda: cluster.put_operator(cluster.deployment)):
        cluster.put_operator(down)
        line = _fails(cluster, capsys, "mlflow")
    assert "http://127.0.0.1:9 is unreachable" in line and "mlflow.trackingUri" in line


def test_a_sweep_file_gets_its_pre_flight_with_the_operators_prefix(cluster, capsys) -> None:
    s3 = cluster.s3.client()
    for key in ("tok/tokenizer.json", "data/a/manifest.json"):
        s3.put_object(Bucket=cluster.bucket, Key=key, Body=b"{}")
    base = {
        "preset": "debug",
        "data": {
            "tokenizer": f"s3://{cluster.bucket}/tok",
            "sources": [{"name": "a", "uri": f"s3://{cluster.bucket}/data/a"}],
        },
    }
    sweep = {"apiVersion": "sphinxx.dev/v1alpha1", "kind": "ScalingSweep", "metadata": {"name": "doc"},
             "spec": {"base": base, "axes": {"models": ["debug"], "dataFractions": [0.5, 1.0]}}}  # fmt: skip
    cluster.sweep.write_text(yaml.safe_dump(sweep))
    code, lines = cluster.doctor(capsys, str(cluster.sweep))
    assert code == 0, "\n".join(lines)
    assert "2 point(s) admitted with the operator's defaults" in _line(lines, "sweep")
    inputs = [line for line in lines if "  sweep input: " in line]
    # No storage.uri in the file: the chart's prefix (s3.bucket) is the checkpoint prefix it probes.
    assert f"PASS  sweep input: storage.uri: s3://{cluster.bucket}/sphinxx (write; all points)" in inputs

    base["data"]["sources"][0]["uri"] = f"s3://{cluster.bucket}/data/missing"
    cluster.sweep.write_text(yaml.safe_dump(sweep))
    code, lines = cluster.doctor(capsys, str(cluster.sweep))
    assert code == 1
    assert any(
        line.startswith(
            f"FAIL  sweep input: data.sources[0] (a): s3://{cluster.bucket}/data/missing/manifest.json"
        )
        for line in lines
    ), "\n".join(lines)


# ------------------------------------------------------------------ the pure decisions alone


def _op(*args: str) -> OperatorConfig:
    return OperatorConfig("ops", "sphinxx", "ghcr.io/sphinxx/sphinxx:0.1.0", 2, 2, args=args)


def test_peering_needs_a_replica_seen_within_its_lifetime() -> None:
    now = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
    op = _op("--all-namespaces", "--peering=sphinxx")

    def peer(priority: int, lastseen: str) -> dict[str, Any]:
        return {"priority": priority, "lifetime": 60, "lastseen": f"2026-01-01T{lastseen}+00:00"}

    fresh = {"status": {"pod-a": peer(5, "11:59:30"), "pod-b": peer(9, "11:59:50")}}
    stale = {"status": {"pod-a": peer(5, "11:50:00")}}
    assert doctor.check_peering(op, {"sphinxx": fresh}, now).detail.endswith("active: pod-b")
    assert doctor.check_peering(op, {"sphinxx": stale}, now).level == Level.FAIL
    missing = doctor.check_peering(op, {"sphinxx": None}, now)
    assert missing.level == Level.FAIL and "missing: sphinxx" in missing.detail
    assert doctor.check_peering(_op("--standalone"), {}, now).level == Level.PASS


def test_gpus_count_only_nodes_the_selector_picks() -> None:
    def node(name: str, gpus: int, **labels: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
        }

    nodes = [node("a", 8, pool="h100"), node("b", 4, pool="a10"), node("c", 0)]
    assert doctor.check_gpus(nodes, {}).detail.startswith("2 node(s), 12 allocatable")
    assert doctor.check_gpus(nodes, {"pool": "h100"}).detail.startswith("1 node(s), 8 allocatable")
    wrong = doctor.check_gpus(nodes, {"pool": "b200"})
    assert wrong.level == Level.FAIL and "none match runtime.gpuNodeSelector" in wrong.detail


def test_names_that_resolve_only_in_the_cluster_warn_instead_of_failing() -> None:
    s3 = doctor.check_bucket(
        "s3://b/p", "http://minio.storage:9000", False, None, "with the operator's credentials"
    )
    mlflow = doctor.check_mlflow("http://mlflow.mlflow:5000", doctor.HttpProbe(resolves=False))
    assert (s3.level, mlflow.level) == (Level.WARN, Level.WARN)
    refused = doctor.check_mlflow("http://m:5000", doctor.HttpProbe(health=200, api=401))
    assert refused.level == Level.FAIL and "refused the credentials" in refused.detail
    assert doctor.exit_code([s3, mlflow]) == 0 and doctor.exit_code([s3, refused]) == 1


# ------------------------------------------------------------------ docs/first-day.md, run


FIRST_DAY = ROOT / "docs" / "first-day.md"
# Exit status of each command of the page run against the healthy cluster: the sweep's inputs are
# the example's placeholders, which do not exist, so its pre-flight fails (and must say so). The
# rest (helm, docker, huggingface-cli, aws, `sweep plan --cost`, which reads every weight folder's
# size) is parsed only (tests/helm/test_runbooks.py).
EXPECTED = {
    ("sphinxx", "doctor"): 0,
    ("sphinxx", "validate"): 0,
    ("sphinxx", "sweep", "check"): 1,
    ("kubectl", "sphinxx"): 0,
    ("kubectl", "apply"): 0,
    ("kubectl", "get"): 0,
}


def _runnable(argv: list[str]) -> tuple[str, ...] | None:
    for key in sorted(EXPECTED, key=len, reverse=True):
        if tuple(argv[: len(key)]) == key:
            if key == ("kubectl", "get") and argv[2] not in ("sweep", "trun"):
                return None  # cluster objects the emulator has no controller for (nodes, CRDs)
            return key
    return None


def _localized(argv: list[str], cluster: Cluster) -> list[str]:
    """The page's namespaces and kubeconfig, as the emulated cluster names them."""
    out = []
    for i, word in enumerate(argv):
        if i and argv[i - 1] in ("-n", "--namespace") and word == "ml":
            word = cluster.ns
        out.append(str(cluster.kube.kubeconfig) if word == "~/.kube/config" else word)
    return out


def test_the_first_day_page_runs_against_the_cluster(cluster, capsys, monkeypatch) -> None:
    from sphinxx.operator import kubectl_plugin
    from tests.helm.test_runbooks import commands, invocations

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kube.kubeconfig))
    for key, value in cluster.s3.env.items():  # `sweep check` probes with this machine's credentials
        monkeypatch.setenv(key, value)
    page = FIRST_DAY.read_text()
    blocks = [line for _, line, prose in commands(page) if not prose]
    in_order = [
        argv
        for line in blocks
        for argv in (invocations(line) or [shlex.split(re.sub(r"\s#.*$", "", line))])
        if argv[:1] in (["sphinxx"], ["kubectl"])
    ]
    ran: dict[str, int] = {}
    for argv in in_order:
        key = _runnable(argv)
        if key is None:
            continue
        if argv[:3] == ["kubectl", "sphinxx", "logs"]:  # a point's TrainingRun, as the operator creates it
            cluster.kube.apply(_point(argv[3], cluster.ns))
        local = _localized(argv, cluster)
        capsys.readouterr()
        if local[0] == "sphinxx":
            code = sphinxx_main(local[1:])
        elif local[1] == "sphinxx":
            code = kubectl_plugin.main(local[2:])
        else:
            code = cluster.kube.kubectl(*local[1:], check=False).returncode
        out = capsys.readouterr().out
        ran[shlex.join(argv)] = code
        # The example sweep's inputs are placeholders: with the sweep file, the doctor fails on them.
        expected = 1 if key == ("sphinxx", "doctor") and argv[-1].endswith(".yaml") else EXPECTED[key]
        assert code == expected, f"{shlex.join(argv)} exited {code}:\n{out}"
        if key == ("sphinxx", "sweep", "check") or expected == 1:
            missing = "model.llm_weights: s3://YOUR-BUCKET/weights/tinyllama-1.1b does not exist"
            assert any(line.startswith("FAIL") and missing in line for line in out.splitlines()), out
    assert len(ran) >= 12, (
        ran
    )  # the doctor twice (+ a sweep), validate, plan, check, apply, get, status, logs
    assert any(c.startswith("sphinxx doctor --namespace ml examples/") for c in ran)
    assert ran["kubectl sphinxx status sphinx-x-family -n ml"] == 0


def _point(name: str, namespace: str) -> dict[str, Any]:
    labels = {"sphinxx.dev/sweep": "sphinx-x-family"}
    meta = {"name": name, "namespace": namespace, "labels": labels}
    return {"apiVersion": "sphinxx.dev/v1alpha1", "kind": "TrainingRun", "metadata": meta, "spec": {}}


def test_the_pages_sample_output_has_the_doctors_lines(cluster, capsys) -> None:
    """The sample in docs/first-day.md names the checks the doctor prints, in its format."""
    sample = re.findall(r"^(PASS|WARN|FAIL)  ([^:]+):", FIRST_DAY.read_text(), flags=re.M)
    _, lines = cluster.doctor(capsys)
    real = {line.split(":", 1)[0][6:] for line in lines if line[:4] in ("PASS", "WARN", "FAIL")}
    named = {
        n.replace("sphinxx-system/", f"{cluster.op_ns}/").replace("ml/", f"{cluster.ns}/") for _, n in sample
    }
    assert len(sample) >= 10 and named == real


def test_the_probes_use_the_operators_credentials_and_restore_the_users(monkeypatch) -> None:
    from sphinxx.operator.doctor_io import Credentials, environment

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "mine")
    monkeypatch.setenv("AWS_PROFILE", "laptop")
    with environment({"AWS_ACCESS_KEY_ID": "operator"}):
        assert os.environ["AWS_ACCESS_KEY_ID"] == "operator" and "AWS_PROFILE" not in os.environ
    assert (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_PROFILE"]) == ("mine", "laptop")
    # No Secret values (IRSA): the endpoint is the operator's, the keys this machine's, and the line says so.
    with environment({"AWS_ENDPOINT_URL": "http://minio:9000"}, keep_own=True):
        assert (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_ENDPOINT_URL"]) == (
            "mine",
            "http://minio:9000",
        )
    assert os.environ.get("AWS_ENDPOINT_URL") != "http://minio:9000"
    assert Credentials().source.startswith("with this machine's credentials")


def test_an_operator_of_another_version_warns_and_two_fail() -> None:
    def op(image: str, namespace: str = "ops") -> OperatorConfig:
        return OperatorConfig(namespace, "sphinxx", image, 1, 1)

    other = doctor.check_operator([op("reg.example.com:5000/sphinxx:0.2.0")], [], "0.1.0", "in any namespace")
    assert other.level == Level.WARN and other.fix == "run the doctor of sphinxx 0.2.0"
    for image in ("reg.example.com:5000/sphinxx:0.1.0-gpu", "reg.example.com:5000/sphinxx@sha256:ab12"):
        assert doctor.check_operator([op(image)], [], "0.1.0", "in any namespace").level == Level.PASS
    two = doctor.check_operator([op("x:0.1.0"), op("x:0.1.0", "team-b")], [], "0.1.0", "in any namespace")
    assert two.level == Level.FAIL and "ops/sphinxx, team-b/sphinxx" in two.detail
