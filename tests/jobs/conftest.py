"""Fixtures for the training-job tests: a synthetic data set and a job runner.

The job runs the way a RayJob runs it: `python -m sphinxx.jobs.train --config FILE` in a
subprocess, against the session's local Ray (RAY_ADDRESS), the moto S3 server and the MLflow
server. Ray workers inherit the raylet's environment, which predates the S3 fixture, so the test
names the S3 variables in SPHINXX_WORKER_ENV (the job forwards them, as a laptop user would).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

# Small enough for 2 shared CPU cores: a 2-layer, 64-wide decoder; text sources plus one image
# source on the 224 canvas (one global view + one cell, 518 positions per image).
TINY_MODEL = {"n_layers": 2, "dim": 64, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 128, "vocab_size": 1024}
SOURCES = (
    ("synth-dialog", "language", 1.0),
    ("synth-math", "language", 1.0),
    ("synth-captions", "vision-language", 0.3),
)
S3_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory):
    from sphinxx.jobs.data.synth import write_synth

    return write_synth(str(tmp_path_factory.mktemp("synth")), size=140)


def tiny_config(
    synth, name: str, storage: str, tracking_uri: str, **sections: dict[str, Any]
) -> dict[str, Any]:
    """A run config for the tests: `sections` are merged over the defaults below."""
    cfg: dict[str, Any] = {
        "preset": "debug",
        "run_id": name,
        "model": {"overrides": dict(TINY_MODEL)},
        "data": {
            "tokenizer": synth.tokenizer_uri,
            "seq_len": 768,
            "canvas": 224,
            "sources": [
                {"name": n, "uri": f"{synth.root}/{n}", "weight": w, "domain": d} for n, d, w in SOURCES
            ],
        },
        "train": {"global_batch": 4, "micro_batch": 2, "lr": 3e-3, "warmup": 0.1, "log_interval": 1},
        "parallel": {"min_workers": 2, "max_workers": 2, "zero_stage": 0, "max_failures": 0},
        "storage": {"uri": storage},
        "tracking": {"uri": tracking_uri, "experiment": "train-e2e"},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


class Job:
    """One `python -m sphinxx.jobs.train` process; its output goes to `log_path`."""

    def __init__(self, tmp: Path, name: str, cfg: dict[str, Any], env: dict[str, str]):
        self.config_path = tmp / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.log_path = tmp / f"{name}.log"
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self, *overrides: str, extra_env: dict[str, str] | None = None) -> Job:
        argv = [sys.executable, "-m", "sphinxx.jobs.train", "--config", str(self.config_path), *overrides]
        log = open(self.log_path, "a")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env, **(extra_env or {})},
            start_new_session=True,
        )
        return self

    def wait(self, timeout: float = 600) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"job did not finish in {timeout}s:\n{self.tail()}") from None

    def kill(self) -> None:
        """What a deleted RayJob does to the driver: its whole process group dies."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def summary(self) -> dict[str, Any]:
        for line in reversed(self.log_path.read_text(errors="replace").splitlines()):
            if line.startswith("{") and "sphinxx_summary" in line:
                return json.loads(line)
        raise AssertionError(f"no summary line:\n{self.tail()}")

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def job_env(ray_cluster: str, s3_env) -> dict[str, str]:
    env = {**os.environ, "RAY_ADDRESS": ray_cluster, "PYTHONUNBUFFERED": "1"}
    env["SPHINXX_WORKER_ENV"] = ",".join(S3_ENV)
    env.pop("MLFLOW_RUN_ID", None)
    return env


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, job: Job | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if job is not None and job.proc is not None and job.proc.poll() is not None:
            raise AssertionError(
                f"job exited ({job.proc.returncode}) while waiting for {what}:\n{job.tail()}"
            )
        time.sleep(0.5)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}" + (f":\n{job.tail()}" if job else "")
    )


def read_traces(path: Path) -> list[dict[str, Any]]:
    rows = []
    for file in sorted(path.glob("*.jsonl")):
        rows.extend(json.loads(line) for line in file.read_text().splitlines() if line.strip())
    return rows
