"""`sphinxx ckpt` turns S3 client failures into one line naming the URI, exit code 1, no traceback.

Each case runs the real CLI in a fresh process: credentials and S3 clients are cached per
process (boto sessions, s3fs instances), so an in-process run could borrow another test's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # one process per case (about 2 s each)

URI = "s3://sphinxx-checkpoints/sweeps/run-1"
SUBCOMMANDS = [["ls"], ["latest"], ["verify"], ["gc", "--dry-run"]]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: nothing listens there


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No AWS_* variables and no AWS config; the instance-metadata lookup is switched off only so
    that botocore does not try 169.254.169.254 (no test reaches the network)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        HOME=str(tmp_path),
        AWS_CONFIG_FILE=str(tmp_path / "no-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        **extra,
    )
    return env


def _ckpt(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sphinxx", "ckpt", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {URI}: "), done.stderr
    return lines[0]


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=[s[0] for s in SUBCOMMANDS])
def test_closed_endpoint_port_is_one_line(sub: list[str], tmp_path: Path) -> None:
    port = _closed_port()
    env = _env(
        tmp_path, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1"
    )
    # One try per request: the default 10 would retry the refused connection for about a minute.
    done = _ckpt([*sub, URI, "--endpoint-url", f"http://127.0.0.1:{port}", "--max-attempts", "1"], env)
    line = _one_line_error(done)
    assert f"cannot connect to http://127.0.0.1:{port}" in line and "--endpoint-url" in line


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=[s[0] for s in SUBCOMMANDS])
def test_missing_credentials_is_one_line(sub: list[str], tmp_path: Path) -> None:
    done = _ckpt([*sub, URI, "--region", "us-east-1"], _env(tmp_path))
    line = _one_line_error(done)
    assert "no usable S3 credentials" in line and "AWS_ACCESS_KEY_ID" in line


def test_unknown_profile_is_one_line(tmp_path: Path) -> None:
    done = _ckpt(["ls", URI, "--profile", "nobody", "--region", "us-east-1"], _env(tmp_path))
    assert "nobody" in _one_line_error(done)
