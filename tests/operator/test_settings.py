"""Operator settings: the chart's RayJob defaults are read from the environment, fill only what a
spec leaves unset, reach the rendered RayJob, and a run keeps the storage prefix it started with.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from sphinxx.operator import expand, names, reconcile
from sphinxx.operator.render import Attempt, render_rayjob
from sphinxx.operator.settings import RunDefaults, Settings
from sphinxx.operator.spec import SpecError, validate_run, validate_sweep

TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
ENV = {
    "SPHINXX_STORAGE_PREFIX": "s3://ml-ckpt/sphinxx",
    "SPHINXX_GPU_NODE_SELECTOR": '{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}',
    "SPHINXX_GPU_TOLERATIONS": '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]',
    "SPHINXX_QUEUE_NAME": "gpu-queue",
    "SPHINXX_SERVICE_ACCOUNT": "ray-pods",
    "SPHINXX_ENV_FROM_SECRETS": "s3-creds, mlflow-creds",
}
DEFAULTS = RunDefaults(
    storage_prefix="s3://ml-ckpt/sphinxx",
    node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    tolerations=[TOLERATION],
    queue_name="gpu-queue",
    service_account="ray-pods",
    env_from_secrets=["s3-creds", "mlflow-creds"],
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_from_env_reads_every_runtime_default(clean_env: pytest.MonkeyPatch) -> None:
    assert Settings.from_env().defaults == RunDefaults()
    for name, value in ENV.items():
        clean_env.setenv(name, value)
    assert Settings.from_env().defaults == DEFAULTS


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SPHINXX_GPU_NODE_SELECTOR", "gpu=h100"),
        ("SPHINXX_GPU_NODE_SELECTOR", '["gpu"]'),
        ("SPHINXX_GPU_NODE_SELECTOR", '{"gpu": 1}'),
        ("SPHINXX_GPU_TOLERATIONS", '{"key": "x"}'),
        ("SPHINXX_GPU_TOLERATIONS", '["nvidia.com/gpu"]'),
    ],
)
def test_malformed_json_names_the_variable(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        Settings.from_env()


def test_defaults_fill_only_what_the_spec_leaves_unset() -> None:
    bare = DEFAULTS.apply_run({"config": {"preset": "debug"}})
    assert bare["config"]["storage"] == {"uri": "s3://ml-ckpt/sphinxx"}
    assert bare["queueName"] == "gpu-queue"
    assert bare["resources"] == {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [TOLERATION],
        "serviceAccount": "ray-pods",
        "envFromSecrets": ["s3-creds", "mlflow-creds"],
    }
    own = {
        "config": {"preset": "debug", "storage": {"uri": "file:///mine", "keep_last": 5}},
        "queueName": "team-queue",
        # An explicitly empty value is the spec's own choice too: no selector, no tolerations.
        "resources": {
            "nodeSelector": {},
            "tolerations": [],
            "serviceAccount": "mine",
            "envFromSecrets": ["x"],
        },
    }
    assert DEFAULTS.apply_run(copy.deepcopy(own)) == own
    # Other storage fields stay; only the missing uri is filled.
    partial = DEFAULTS.apply_run({"config": {"preset": "debug", "storage": {"keep_last": 5}}})
    assert partial["config"]["storage"] == {"keep_last": 5, "uri": "s3://ml-ckpt/sphinxx"}
    assert RunDefaults().apply_run(own) == own


def test_default_storage_prefix_beats_the_presets_laptop_prefix() -> None:
    preset_only, cfg = validate_run("r", {"config": {"preset": "debug"}})
    assert cfg.storage.uri.startswith("file://")  # the debug preset's own
    _, cfg = validate_run("r", DEFAULTS.apply_run({"config": {"preset": "debug"}}))
    assert cfg.storage.uri == "s3://ml-ckpt/sphinxx"


def _attempt(name: str) -> Attempt:
    return Attempt(
        namespace="ml",
        name=name,
        uid="7f1d4a9e-1c51-4a62-9b54-0d6a3c2e8f10",
        attempt=1,
        run_id=f"{name}-1a2b3c4d",
        config_uri=f"s3://ml-ckpt/sphinxx/{name}-1a2b3c4d/config.yaml",
        image="ghcr.io/sphinxx/sphinxx:0.1.0-gpu",
    )


def test_defaults_reach_the_rendered_rayjob() -> None:
    spec, cfg = validate_run("tiny", DEFAULTS.apply_run({"config": {"preset": "tinyllama-1.1b"}}))
    job = render_rayjob(_attempt("tiny"), spec, cfg)
    assert job["metadata"]["labels"][names.KUEUE_QUEUE] == "gpu-queue"
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert worker["tolerations"] == [TOLERATION]
    assert "nodeSelector" not in head and "tolerations" not in head  # GPU defaults: workers only
    for pod in (head, worker):
        assert pod["serviceAccountName"] == "ray-pods"
        assert pod["containers"][0]["envFrom"] == [
            {"secretRef": {"name": "s3-creds"}},
            {"secretRef": {"name": "mlflow-creds"}},
        ]
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["SPHINXX_STORAGE_PREFIX"] == "s3://ml-ckpt/sphinxx"


def test_sweep_without_storage_is_valid_only_with_a_default_prefix() -> None:
    raw = {"base": {"train": {"steps": 10}}, "axes": {"models": ["debug"], "dataFractions": [0.5, 1.0]}}
    with pytest.raises(SpecError) as err:
        validate_sweep("nostore", raw)
    assert err.value.path == "spec.base.storage.uri"
    spec = validate_sweep("nostore", DEFAULTS.apply_sweep(raw))
    expand.validate_points("nostore", spec, raw, DEFAULTS)
    # The points do not embed the default: each applies the operator's defaults itself.
    child = expand.point_spec(raw, expand.points("nostore", spec)[0])
    assert "storage" not in child["config"] and "queueName" not in child


class FakeKube:
    """Enough of operator.kube.Kube for one reconcile: objects in a dict, calls recorded."""

    def __init__(self, *objects: tuple[str, dict[str, Any]]):
        self.objects = {(r, o["metadata"]["namespace"], o["metadata"]["name"]): o for r, o in objects}

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((resource, namespace, name)))

    def list(self, resource: str, namespace: str, labels: str = "") -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o) for (r, ns, _), o in self.objects.items() if r == resource and ns == namespace
        ]

    def create(self, resource: str, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        key = (resource, body["metadata"]["namespace"], body["metadata"]["name"])
        created = key not in self.objects
        self.objects.setdefault(key, copy.deepcopy(body))
        return self.objects[key], created

    def patch_status(self, resource: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        obj = self.objects[(resource, namespace, name)]
        obj["status"] = {**(obj.get("status") or {}), **patch}

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        pass


def _run_obj(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {"name": "solo", "namespace": "ml", "uid": "5b1f0c7e-9d2a-4c41-8a57-2f6e1d0b9c33", "generation": 1}
    return {"metadata": meta, "spec": spec, "status": status or {}}


def test_reconcile_applies_the_defaults_and_pins_the_storage_prefix() -> None:
    settings = Settings(defaults=RunDefaults(storage_prefix="memory://defaults-a", queue_name="gpu-queue"))
    kube = FakeKube(("trainingruns", _run_obj({"config": {"preset": "debug"}})))
    reconcile.reconcile_run(kube, "ml", "solo", settings)
    run = kube.objects[("trainingruns", "ml", "solo")]
    assert run["status"]["storageUri"] == "memory://defaults-a"
    assert run["status"]["configUri"].startswith("memory://defaults-a/")
    (job,) = [o for (r, _, _), o in kube.objects.items() if r == "rayjobs"]
    assert job["metadata"]["labels"][names.KUEUE_QUEUE] == "gpu-queue"
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["SPHINXX_STORAGE_PREFIX"] == "memory://defaults-a"

    # The chart's bucket changes: the run keeps checkpointing where it started.
    moved = Settings(defaults=RunDefaults(storage_prefix="memory://defaults-b"))
    spec, cfg = validate_run("solo", reconcile._run_spec(run, moved))
    assert cfg.storage.uri == "memory://defaults-a"
    fresh = _run_obj({"config": {"preset": "debug"}})
    assert validate_run("solo", reconcile._run_spec(fresh, moved))[1].storage.uri == "memory://defaults-b"
