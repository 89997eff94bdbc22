"""The operator as a process: `sphinxx operator run` against the kmock API, as it runs in a cluster.

    op = start_operator(workdir, kube, env=s3_server.env)   # KUBECONFIG + S3 endpoint/credentials
    ...; op.restart(); ...; op.process.stop()

Short reconcile intervals keep tests fast; the liveness endpoint doubles as the health check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .kube import KubeServer
from .process import ServerProcess, free_port, http_ok, venv_bin

TEST_INTERVALS = {"SPHINXX_RUN_INTERVAL": "1", "SPHINXX_SWEEP_INTERVAL": "1", "SPHINXX_RETRY_DELAY": "1"}


@dataclass
class OperatorServer:
    liveness_url: str
    process: ServerProcess

    def restart(self) -> None:
        """Stop (SIGTERM, as a pod deletion would) and start again with the same settings."""
        self.process.stop()
        self.process.start(lambda: http_ok(self.liveness_url), timeout=60)

    def healthy(self) -> bool:
        return http_ok(self.liveness_url)


def start_operator(
    workdir: Path, kube: KubeServer, env: dict[str, str] | None = None, namespaces: list[str] | None = None
) -> OperatorServer:
    port = free_port()
    liveness = f"http://127.0.0.1:{port}/healthz"
    argv = [
        venv_bin("sphinxx"),
        "operator",
        "run",
        "--standalone",
        "--liveness",
        liveness,
        "--log-format",
        "full",
    ]
    argv += [f"--namespace={ns}" for ns in namespaces or []] or ["--all-namespaces"]
    process = ServerProcess(
        "sphinxx-operator", argv, workdir / "operator.log", env={**kube.env, **TEST_INTERVALS, **(env or {})}
    )
    process.start(lambda: http_ok(liveness), timeout=60)
    return OperatorServer(liveness_url=liveness, process=process)
