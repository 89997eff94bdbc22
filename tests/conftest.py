"""Session-scoped fixtures that start the real local servers (see tests/services/).

Logs of every server are kept under the pytest basetemp (`--basetemp` or
/tmp/pytest-of-*/); a failing start prints the tail of the log.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services.mlflow_server import MLflowServer, start_mlflow
from tests.services.postgres import PostgresServer, start_postgres
from tests.services.s3 import S3Server, start_s3

# Ray Train's controller polls its workers every 2 s by default, so a job whose training takes
# seconds waits up to 2 s per transition (the group started, the loop returned). The tests' jobs
# run against a one-machine Ray with a handful of workers: polling every 0.2 s is cheap there and
# ends each job ~2.5 s sooner. Set here, every job, stand-in and local runner the tests start
# inherits it; the driver forwards it to Ray Train's controller.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def s3_server(services_dir: Path) -> Iterator[S3Server]:
    server = start_s3(services_dir)
    yield server
    server.process.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Point every S3 client in this process (and its children) at the moto server."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: S3Server) -> str:
    """A fresh, empty bucket on the moto server (the environment points at it)."""
    return s3_env.new_bucket()


@pytest.fixture(scope="session")
def postgres_server(services_dir: Path) -> Iterator[PostgresServer]:
    server = start_postgres(services_dir / "postgres")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(services_dir: Path, postgres_server: PostgresServer) -> Iterator[MLflowServer]:
    """The tracking server the tests share, on PostgreSQL as production MLflow runs (SQLite stays the
    laptop default of the local runner and the job)."""
    server = start_mlflow(
        services_dir / "mlflow", backend_store_uri=postgres_server.create_database("mlflow")
    )
    yield server
    server.process.stop()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local Ray instance shared by the session; yields its address."""
    from tests.services.ray_local import start_ray, stop_ray

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short path: Ray's socket names are limited
    address = start_ray(temp_dir)
    yield address
    stop_ray()


@pytest.fixture(scope="session")
def kube(services_dir: Path):
    """The kmock Kubernetes API emulator over HTTP, with a kubeconfig pointing at it."""
    from tests.services.kube import start_kube

    server = start_kube(services_dir / "kube")
    yield server
    server.process.stop()
