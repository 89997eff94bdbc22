"""Operator settings: the chart's RayJob defaults are read from the environment, fill only what a
spec leaves unset, reach the rendered RayJob, and a run keeps the storage prefix it started with.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from sphinxx.operator import names, reconcile
from sphinxx.operator.kube import Kube
from sphinxx.operator.render import Attempt, render_rayjob
from sphinxx.operator.settings import RunDefaults, Settings
from sphinxx.schema.admission import admit_run
from sphinxx.schema.fields import SchemaError
from sphinxx.sweep.points import admit_sweep, point_spec, points
from tests.schema.corpus import DATA


def validate_run(name: str, spec: dict):
    admitted = admit_run(name, spec)
    return admitted.spec, admitted.config


def _config(preset: str, **sections: Any) -> dict[str, Any]:
    return {"preset": preset, "data": DATA, **sections}


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
    ("value", "on"), [(None, True), ("1", True), ("0", False), ("false", False), ("off", False)]
)
def test_preflight_is_on_unless_turned_off(
    clean_env: pytest.MonkeyPatch, value: str | None, on: bool
) -> None:
    clean_env.delenv("SPHINXX_PREFLIGHT", raising=False)
    if value is not None:
        clean_env.setenv("SPHINXX_PREFLIGHT", value)
    assert Settings.from_env().preflight is on


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SPHINXX_GPU_NODE_SELECTOR", "gpu=h100"),
        ("SPHINXX_GPU_NODE_SELECTOR", '["gpu"]'),
        ("SPHINXX_GPU_NODE_SELECTOR", '{"gpu": 1}'),
        ("SPHINXX_GPU_TOLERATIONS", '{"key": "x"}'),
        ("SPHINXX_GPU_TOLERATIONS", '["nvidia.com/gpu"]'),
        ("SPHINXX_GPU_NODE_SELECTOR", '{"gpu": "h100", "gpu": "a100"}'),  # one would be dropped
    ],
)
def test_malformed_json_names_the_variable(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        Settings.from_env()


def test_a_key_given_twice_is_refused_not_dropped(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SPHINXX_POD_DEFAULTS", '{"schedulerName": "volcano",\n "schedulerName": "default"}')
    with pytest.raises(ValueError, match="^SPHINXX_POD_DEFAULTS:2: key 'schedulerName' is given twice"):
        Settings.from_env()


def test_defaults_fill_only_what_the_spec_leaves_unset() -> None:
    bare = DEFAULTS.apply_run({"config": _config("debug")})
    assert bare["config"]["storage"] == {"uri": "s3://ml-ckpt/sphinxx"}
    assert bare["queueName"] == "gpu-queue"
    assert bare["resources"] == {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [TOLERATION],
        "serviceAccount": "ray-pods",
        "envFromSecrets": ["s3-creds", "mlflow-creds"],
    }
    own = {
        "config": _config("debug", storage={"uri": "file:///mine", "keep_last": 5}),
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
    partial = DEFAULTS.apply_run({"config": _config("debug", storage={"keep_last": 5})})
    assert partial["config"]["storage"] == {"keep_last": 5, "uri": "s3://ml-ckpt/sphinxx"}
    assert RunDefaults().apply_run(own) == own


def test_default_storage_prefix_beats_the_presets_laptop_prefix() -> None:
    preset_only, cfg = validate_run("r", {"config": _config("debug")})
    assert cfg.storage.uri.startswith("file://")  # the debug preset's own
    _, cfg = validate_run("r", DEFAULTS.apply_run({"config": _config("debug")}))
    assert cfg.storage.uri == "s3://ml-ckpt/sphinxx"


def _attempt(name: str) -> Attempt:
    return Attempt(
        namespace="ml",
        name=name,
        uid="7f1d4a9e-1c51-4a62-9b54-0d6a3c2e8f10",
        attempt=1,
        config_uri=f"s3://ml-ckpt/sphinxx/{name}-1a2b3c4d/config.yaml",
        image="ghcr.io/sphinxx/sphinxx:0.1.0-gpu",
    )


def test_defaults_reach_the_rendered_rayjob() -> None:
    spec, cfg = validate_run("tiny", DEFAULTS.apply_run({"config": _config("tinyllama-1.1b")}))
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
    assert cfg.storage.uri == "s3://ml-ckpt/sphinxx"


def test_sweep_without_storage_is_valid_only_with_a_default_prefix() -> None:
    raw = {
        "base": {"train": {"steps": 10}, "data": DATA},
        "axes": {"models": ["debug"], "dataFractions": [0.5, 1.0]},
    }
    with pytest.raises(SchemaError) as err:
        admit_sweep("nostore", raw)
    assert err.value.path == "spec.base.storage.uri"
    spec = admit_sweep("nostore", raw, DEFAULTS.apply_run).spec
    # The points do not embed the default: each applies the operator's defaults itself.
    child = point_spec(raw, points("nostore", spec)[0])
    assert "storage" not in child["config"] and "queueName" not in child


def _run_obj(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": "TrainingRun",
        "metadata": {"name": "solo"},
        "spec": spec,
    }


def test_reconcile_applies_the_defaults_and_pins_the_storage_prefix(kube, tmp_path) -> None:
    """One reconcile pass, in process, against the Kubernetes emulator (no operator process)."""
    namespace = kube.new_namespace("defaults")
    api = Kube(kube.api_client())
    first, second = f"file://{tmp_path}/defaults-a", f"file://{tmp_path}/defaults-b"
    settings = Settings(defaults=RunDefaults(storage_prefix=first, queue_name="gpu-queue"), preflight=False)
    kube.apply(_run_obj({"config": _config("debug")}), namespace)
    reconcile.reconcile_run(api, namespace, "solo", settings)
    run = api.get("trainingruns", namespace, "solo")
    assert run["status"]["storageUri"] == first
    assert run["status"]["configUri"].startswith(f"{first}/")
    (job,) = api.list("rayjobs", namespace)
    assert job["metadata"]["labels"][names.KUEUE_QUEUE] == "gpu-queue"
    stored = yaml.safe_load(open(run["status"]["configUri"].removeprefix("file://")).read())
    assert stored["storage"]["uri"] == first and stored["run_id"] == run["status"]["runId"]

    # The chart's bucket changes: the run keeps checkpointing where it started.
    moved = Settings(defaults=RunDefaults(storage_prefix=second), preflight=False)
    spec, cfg = validate_run("solo", reconcile._run_spec(run, moved))
    assert cfg.storage.uri == first
    fresh = {"metadata": {"name": "solo"}, "spec": {"config": _config("debug")}}
    assert validate_run("solo", reconcile._run_spec(fresh, moved))[1].storage.uri == second


POD = {
    "schedulerName": "volcano",
    "imagePullSecrets": ["registry"],
    "extraResources": {"rdma/hca": 1},
    "shmSize": "64Gi",
}


def test_pod_defaults_come_from_the_environment_and_fill_unset_pod_settings(
    clean_env: pytest.MonkeyPatch,
) -> None:
    import json

    clean_env.setenv("SPHINXX_POD_DEFAULTS", json.dumps(POD))
    defaults = Settings.from_env().defaults
    assert defaults.pod == POD
    config = _config("tinyllama-1.1b", storage={"uri": "s3://ml-ckpt/sphinxx"})
    filled = defaults.apply_run({"config": config, "resources": {"shmSize": "0"}})
    assert filled["resources"] == {**POD, "shmSize": "0"}  # the run's own value wins
    spec, cfg = validate_run("pods", filled)
    worker = render_rayjob(_attempt("pods"), spec, cfg)["spec"]["rayClusterSpec"]["workerGroupSpecs"][0][
        "template"
    ]
    assert worker["spec"]["schedulerName"] == "volcano"
    assert [v["name"] for v in worker["spec"]["volumes"]] == ["sphinxx-stage"]  # no /dev/shm (shmSize 0)
    assert worker["spec"]["containers"][0]["resources"]["limits"]["rdma/hca"] == 1
    clean_env.setenv("SPHINXX_POD_DEFAULTS", '{"shmsize": "1Gi"}')
    with pytest.raises(ValueError, match="SPHINXX_POD_DEFAULTS: unknown pod setting"):
        Settings.from_env()


def test_the_charts_pod_defaults_schema_is_the_specs() -> None:
    """values.schema.json's runtime.podDefaults says what a TrainingRun's resources say of those keys."""
    import json
    from pathlib import Path

    from sphinxx.operator.settings import POD_DEFAULT_KEYS
    from sphinxx.schema.fields import Naming
    from sphinxx.schema.openapi import Dialect, schema_of
    from sphinxx.schema.resources import Resources

    chart = json.loads((Path(__file__).resolve().parents[2] / "helm/sphinxx/values.schema.json").read_text())
    declared = chart["properties"]["runtime"]["properties"]["podDefaults"]["properties"]
    spec = schema_of(Resources, Dialect.JSON, Naming.CAMEL)["properties"]
    assert list(declared) == list(POD_DEFAULT_KEYS)
    for key in POD_DEFAULT_KEYS:
        assert declared[key] == {k: v for k, v in spec[key].items() if k != "default"}, key
