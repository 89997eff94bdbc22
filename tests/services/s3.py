"""S3: moto in server mode (real HTTP S3 API) on 127.0.0.1."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from .process import ServerProcess, free_port, http_ok, venv_bin

# Dummy credentials: moto accepts any; real code reads them from the environment
# exactly as it would for AWS or MinIO.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    endpoint_url: str
    process: ServerProcess

    @property
    def env(self) -> dict[str, str]:
        """What a user would export to point every S3 client at this endpoint."""
        return {
            **CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, **_boto_kwargs())

    def new_bucket(self, prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def restart(self) -> None:
        """Stop and start again on the same port (moto keeps no state across restarts)."""
        self.process.stop()
        self.process.start(lambda: http_ok(self.endpoint_url + "/moto-api/"))


def _boto_kwargs() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def start_s3(log_dir: Path, env: dict[str, str] | None = None) -> S3Server:
    """moto on a free port; `env` reaches moto itself (bench/operator.py --live turns its request
    recorder on with MOTO_ENABLE_RECORDING and MOTO_RECORDER_FILEPATH)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [venv_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    process = ServerProcess("moto_server", argv, log_dir / "moto.log", env=env)
    process.start(lambda: http_ok(url + "/moto-api/"))
    return S3Server(endpoint_url=url, process=process)
