"""Fixtures of the end-to-end tests: every real part on 127.0.0.1, wired as in a cluster.

    kubectl -> kmock (Kubernetes API) <- `sphinxx operator run` (a process)
                                      <- the KubeRay stand-in (kuberay_standin.py, a thread here)
                                           -> `python -m sphinxx.jobs.train` on a local Ray head
    moto S3 (data, checkpoints)   MLflow server (PostgreSQL)   -- shared by all of them

The operator reaches S3 and MLflow through its environment (as its Deployment would give it);
the Ray pods get S3 credentials from a Secret named in the sweep's `resources.envFromSecrets`,
which the stand-in resolves like the kubelet would. Nothing in `sphinxx` knows it is tested.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.services.operator import OperatorServer, start_operator

from .kuberay_standin import KubeRayStandIn

REPO = Path(__file__).resolve().parents[2]
TINY_SWEEP = REPO / "examples" / "sweeps" / "tiny.yaml"
DEMO_DATA = ".demo/data"  # where tiny.yaml's relative data paths point (`make demo` writes them)
S3_SECRET = "sphinxx-s3"  # the Secret tiny.yaml's resources.envFromSecrets names
SYNTH_SIZE = 240  # the demo's data set size, so the steps match what `make demo` trains


# The bucket and the data set on it are shared by the end-to-end modules (the CLI takes seconds to
# write the set); each module gets its own namespace, KubeRay stand-in and operator. The operator
# stops with its module: it watches every namespace, and later tests' objects are not its business.


@pytest.fixture(scope="session")
def e2e_bucket(s3_server) -> str:
    return s3_server.new_bucket("e2e")


@pytest.fixture(scope="session")
def synth_on_s3(s3_server, e2e_bucket: str) -> str:
    """The synthetic set and tokenizer written to the bucket by the CLI a user would run."""
    prefix = f"s3://{e2e_bucket}/data"
    subprocess.run(
        [_bin("sphinxx"), "data", "synth", prefix, "--size", str(SYNTH_SIZE)],
        env={**os.environ, **s3_server.env},
        check=True,
        capture_output=True,
        timeout=300,
    )
    return prefix


@pytest.fixture(scope="module")
def e2e_operator(kube, s3_server, mlflow_server, tmp_path_factory) -> Iterator[OperatorServer]:
    env = {**s3_server.env, "MLFLOW_TRACKING_URI": mlflow_server.tracking_uri, "SPHINXX_PREFLIGHT": "1"}
    server = start_operator(tmp_path_factory.mktemp("e2e-operator"), kube, env=env)
    yield server
    server.process.stop()


@pytest.fixture(scope="module")
def e2e_namespace(kube, s3_server) -> str:
    """A fresh namespace holding the S3 Secret the Ray pods take their credentials from."""
    namespace = kube.new_namespace("e2e")
    core = client.CoreV1Api(kube.api_client())
    data = {k: base64.b64encode(v.encode()).decode() for k, v in s3_server.env.items()}
    core.create_namespaced_secret(
        namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": S3_SECRET}, "data": data}
    )
    return namespace


@pytest.fixture(scope="module")
def kuberay(kube, e2e_namespace: str, ray_cluster: str, tmp_path_factory) -> Iterator[KubeRayStandIn]:
    standin = KubeRayStandIn(kube, e2e_namespace, ray_cluster, tmp_path_factory.mktemp("kuberay")).start()
    yield standin
    standin.stop()


def cluster_sweep(path: Path, data_prefix: str, storage_uri: str) -> dict[str, Any]:
    """tiny.yaml as a cluster user would apply it: data and checkpoints on S3 instead of a laptop."""
    sweep = yaml.safe_load(path.read_text())
    data = sweep["spec"]["base"]["data"]
    data["tokenizer"] = data["tokenizer"].replace(DEMO_DATA, data_prefix)
    for source in data["sources"]:
        assert source["uri"].startswith(DEMO_DATA), source
        source["uri"] = source["uri"].replace(DEMO_DATA, data_prefix)
    sweep["spec"]["base"].setdefault("storage", {})["uri"] = storage_uri
    return sweep


def kubectl_json(kube, *args: str) -> Any:
    return kube.get_json(*args)


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name
