"""The operator as a process: `sphinxx operator run` against the kmock API, as it runs in a cluster.

    op = start_operator(workdir, kube, env=s3_server.env)   # KUBECONFIG + S3 endpoint/credentials
    ...; op.restart(); ...; op.process.stop()
    a = start_operator(workdir, kube, namespaces=[ns], peering="sphinxx", priority=200, name="a")
    b = start_operator(workdir, kube, namespaces=[ns], peering="sphinxx", priority=100, name="b")

Short reconcile intervals keep tests fast; the liveness endpoint doubles as the health check.
SPHINXX_TEST_VERBOSE=1 runs the operators with `--verbose` (kopf's watch and peering steps in their logs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .kube import KubeServer
from .process import ServerProcess, free_port, http_ok, venv_bin

TEST_INTERVALS = {
    "SPHINXX_RUN_INTERVAL": "1",
    "SPHINXX_SWEEP_INTERVAL": "1",
    "SPHINXX_RETRY_DELAY": "1",
    "SPHINXX_PROGRESS_INTERVAL": "1",
    "SPHINXX_CHECKPOINT_READ_INTERVAL": "1",
}
# The specs of most operator tests name buckets that do not exist (s3://data/...): their operator
# runs as one deployed without read access to the buckets. The pre-flight tests turn it on.
TEST_PREFLIGHT = {"SPHINXX_PREFLIGHT": "0"}


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
    workdir: Path,
    kube: KubeServer,
    env: dict[str, str] | None = None,
    namespaces: list[str] | None = None,
    peering: str | None = None,
    priority: int | None = None,
    name: str = "operator",
) -> OperatorServer:
    """`sphinxx operator run`: standalone, or a replica of `peering` (with `priority`, its own POD_ID
    `name` and a short peering lifetime, so a killed replica is replaced within seconds)."""
    port = free_port()
    liveness = f"http://127.0.0.1:{port}/healthz"
    argv = [venv_bin("sphinxx"), "operator", "run", "--liveness", liveness, "--log-format", "full"] + (
        ["--verbose"] if os.environ.get("SPHINXX_TEST_VERBOSE") else []
    )
    if peering:
        argv += [f"--peering={peering}", "--peering-lifetime=15"]
        argv += [f"--priority={priority}"] if priority is not None else []
    else:
        argv.append("--standalone")
    argv += [f"--namespace={ns}" for ns in namespaces or []] or ["--all-namespaces"]
    for namespace in namespaces or []:
        _ensure_namespace(kube, namespace)
    before = kube.request_totals()
    process = ServerProcess(
        f"sphinxx-{name}",
        argv,
        workdir / f"{name}.log",
        env={**kube.env, **TEST_INTERVALS, **TEST_PREFLIGHT, "POD_ID": name, **(env or {})},
    )
    process.start(lambda: http_ok(liveness), timeout=60)
    if not peering:  # (a paused replica does not watch; peering tests wait for "Resuming" instead)
        _wait_watching(kube, before, process)
    return OperatorServer(liveness_url=liveness, process=process)


WATCHED = ("trainingruns", "scalingsweeps", "rayjobs")


def _ensure_namespace(kube: KubeServer, namespace: str) -> None:
    """The namespaces a scoped operator is given exist before it starts, as in a cluster (the
    emulator otherwise creates a namespace with its first object, and kopf opens that
    namespace's watches only when it sees the namespace appear)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        client.CoreV1Api(kube.api_client()).create_namespace({"metadata": {"name": namespace}})
    except ApiException as exc:
        if exc.status != 409:
            raise


def _wait_watching(kube: KubeServer, before: dict[tuple[str, str, str], int], process: ServerProcess) -> None:
    """Until the operator has opened its watches (its API server request counts say so): the
    liveness endpoint answers before kopf has listed and watched its resources, and a test that
    creates objects in that window depends on the emulator's list-then-watch replay under load."""
    import time

    deadline = time.monotonic() + 60
    while True:
        now = kube.request_totals()
        if all(now.get(("WATCH", r, ""), 0) > before.get(("WATCH", r, ""), 0) for r in WATCHED):
            return
        if time.monotonic() > deadline:
            opened = {r: now.get(("WATCH", r, ""), 0) - before.get(("WATCH", r, ""), 0) for r in WATCHED}
            raise RuntimeError(f"{process.name}: watches opened after 60 s: {opened}; see {process.log_path}")
        time.sleep(0.1)
