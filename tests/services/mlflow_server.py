"""MLflow: a real `mlflow server` process on 127.0.0.1, backed by PostgreSQL (as in production) or SQLite."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .process import ServerProcess, free_port, http_ok, venv_bin


@dataclass
class MLflowServer:
    tracking_uri: str
    process: ServerProcess

    def restart(self) -> None:
        self.process.stop()
        self.process.start(lambda: http_ok(self.tracking_uri + "/health"), timeout=120)


def start_mlflow(
    workdir: Path,
    artifacts_destination: str | None = None,
    env: dict[str, str] | None = None,
    backend_store_uri: str | None = None,
) -> MLflowServer:
    """Start `mlflow server` on `backend_store_uri` (a postgresql:// database; default a SQLite file);
    artifacts go to `artifacts_destination` (e.g. an s3:// URI) or a temp dir."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    artifacts = artifacts_destination or (workdir / "artifacts").as_uri()
    argv = [
        venv_bin("mlflow"),
        "server",
        "--backend-store-uri",
        backend_store_uri or f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        # One worker and no job runner: ~0.5 GiB instead of ~3 GiB
        # (docs/architecture.md, "Real components in tests").
        "--workers",
        "1",
    ]
    process = ServerProcess(
        "mlflow",
        argv,
        workdir / "mlflow.log",
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    process.start(lambda: http_ok(url + "/health"), timeout=120)
    return MLflowServer(tracking_uri=url, process=process)
