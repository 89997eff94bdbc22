"""The chart and the operator agree on how the chart configures it.

Every setting the chart passes to the operator (flags of `sphinxx operator run`, `SPHINXX_*`
environment variables for the RayJob defaults the chart's values document) must change what
the operator does; a value that the operator ignores is a documented knob that silently does
nothing. With several replicas, kopf peering must be able to elect one active operator.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from typing import Any

import pytest
import yaml

from sphinxx.cli import build_parser
from sphinxx.operator import cli as operator_cli
from sphinxx.operator.settings import DEFAULT_IMAGE, Settings

from .conftest import CHART_DIR, RELEASE, ROOT

ALL_RUNTIME_VALUES = {
    "s3": {"bucket": "ml-ckpt", "endpointUrl": "http://minio.storage:9000", "credentialsSecret": "s3-creds"},
    "mlflow": {"trackingUri": "http://mlflow.mlflow:5000", "credentialsSecret": "mlflow-creds"},
    "operator": {
        "timing": {
            "runInterval": 20,
            "sweepInterval": 30,
            "retryDelay": 60,
            "progressInterval": 90,
            "progressStale": 600,
            "checkpointReadInterval": 120,
        }
    },
    "runtime": {
        "image": "reg/sphinxx:1-gpu",
        "gpuNodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "queueName": "gpu-queue",
        "serviceAccountName": "ray-pods",
        "podDefaults": {"schedulerName": "volcano", "extraResources": {"rdma/hca": 1}},
    },
}
# Read by libraries, not by Settings: boto3/s3fs (endpoint, region), kopf (peer identity),
# Python itself.
LIBRARY_ENV = {
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "POD_ID",
    "HOME",
    "PYTHONDONTWRITEBYTECODE",
}


def _container(render) -> dict[str, Any]:
    deployment = render(ALL_RUNTIME_VALUES).one("Deployment", RELEASE)
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_every_environment_setting_reaches_the_operator_settings(
    render, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {e["name"]: e["value"] for e in _container(render)["env"] if "value" in e}
    ours = sorted(set(env) - LIBRARY_ENV)
    assert ours, "the chart passes RayJob defaults to the operator"
    for name in list(os.environ):
        if name.startswith("SPHINXX_"):
            monkeypatch.delenv(name)
    baseline = Settings.from_env()
    ignored = []
    for name in ours:
        monkeypatch.setenv(name, env[name])
        if Settings.from_env() == baseline:
            ignored.append(name)
        monkeypatch.delenv(name)
    assert ignored == [], (
        f"sphinxx.operator.settings.Settings.from_env() ignores {ignored}, which the chart sets from "
        "values.yaml (runtime.*, s3.*, mlflow.credentialsSecret): read them and apply them as RayJob defaults"
    )


def test_every_flag_reaches_the_operator(render, monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(_container(render)["args"])
    # cmd_run writes os.environ; a private copy keeps this process's environment clean.
    monkeypatch.setattr(
        os,
        "environ",
        {k: v for k, v in os.environ.items() if k not in ("SPHINXX_IMAGE", "MLFLOW_TRACKING_URI")},
    )
    # cmd_run exports the flags as the environment Settings reads; replay that without kopf.
    monkeypatch.setattr("kopf.cli.main", lambda **_: None)
    operator_cli.cmd_run(args)
    settings = Settings.from_env()
    assert settings.image == "reg/sphinxx:1-gpu"
    assert settings.tracking_uri == "http://mlflow.mlflow:5000"


def test_replicas_get_distinct_peering_priorities(render, monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf pauses every peer whose priority is not the highest, and all peers of equal priority."""
    container = render({"replicaCount": 2}).one("Deployment", RELEASE)["spec"]["template"]["spec"][
        "containers"
    ][0]
    priorities = []
    for pod in ("sphinxx-6d9c8b7f5d-x2kqp", "sphinxx-6d9c8b7f5d-7hn4c"):
        monkeypatch.setenv("POD_ID", pod)  # what the Deployment sets per replica
        args: argparse.Namespace = build_parser().parse_args(container["args"])
        argv = operator_cli.kopf_argv(args)
        priorities.append(next(a for a in argv if a.startswith("--priority=")))
    assert priorities[0] != priorities[1], (
        f"two replicas rendered from the same Deployment get the same kopf priority ({priorities[0]}): "
        "kopf then pauses both; `sphinxx operator run --peering` must give each replica its own priority"
    )


def test_default_image_matches_the_operator_and_the_package() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == version
    assert f"{values['image']['repository']}:{chart['appVersion']}" == DEFAULT_IMAGE


def test_peering_lifetime_reaches_kopf(render, monkeypatch: pytest.MonkeyPatch) -> None:
    """operator.peering.lifetime -> --peering-lifetime -> Settings -> kopf's settings.peering.lifetime."""
    container = render({"replicaCount": 2, "operator": {"peering": {"lifetime": 20}}}).one(
        "Deployment", RELEASE
    )["spec"]["template"]["spec"]["containers"][0]
    assert "--peering-lifetime=20" in container["args"]
    args = build_parser().parse_args(container["args"])
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("SPHINXX_")})
    monkeypatch.setattr("kopf.cli.main", lambda **_: None)
    operator_cli.cmd_run(args)
    assert Settings.from_env().peering_lifetime == 20


def test_the_charts_timing_defaults_are_the_operators(render, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chart installed with its defaults runs the operator exactly as `Settings()` documents, and
    each operator.timing value reaches the setting it names."""
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("SPHINXX_")})
    container = render({}).one("Deployment", RELEASE)["spec"]["template"]["spec"]["containers"][0]
    monkeypatch.setattr(
        os, "environ", {**os.environ, **{e["name"]: e["value"] for e in container["env"] if "value" in e}}
    )
    defaults, chart = Settings(), Settings.from_env()
    fields = (
        "run_interval", "sweep_interval", "retry_delay", "progress_interval", "progress_stale",
        "checkpoint_read_interval",
    )  # fmt: skip
    assert [getattr(chart, f) for f in fields] == [getattr(defaults, f) for f in fields]
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("SPHINXX_")})
    custom = {e["name"]: e["value"] for e in _container(render)["env"] if "value" in e}
    monkeypatch.setattr(os, "environ", {**os.environ, **custom})
    assert [getattr(Settings.from_env(), f) for f in fields] == [20, 30, 60, 90, 600, 120]
