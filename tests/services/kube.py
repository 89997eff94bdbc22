"""Kubernetes API: the kmock emulator (tests/services/kmock_server.py) as a process, plus a kubeconfig.

Everything reaches it the way it would reach a cluster: `KUBECONFIG` points kubectl, kopf and
the `kubernetes` client at the emulator's plain-HTTP URL with a dummy token.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .process import ServerProcess, free_port, http_ok, python_exe

REPO_ROOT = Path(__file__).resolve().parents[2]
# The generated CRDs (written by `sphinxx operator crds`); served with their printer columns.
CHART_CRDS = REPO_ROOT / "helm" / "sphinxx" / "crds"


@dataclass
class KubeServer:
    url: str
    kubeconfig: Path
    process: ServerProcess

    @property
    def env(self) -> dict[str, str]:
        """What a user would export to point kubectl, kopf and the Python client at this API.

        kubectl caches discovery per host:port; a private cache keeps a previous session's
        emulator on the same port from answering for this one.
        """
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECACHEDIR": str(self.kubeconfig.parent / "kubectl-cache"),
        }

    def request_totals(self) -> dict[tuple[str, str, str], int]:
        """`apiserver_request_total` from the emulator's /metrics: (verb, resource, subresource) -> count."""
        import re
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/metrics", timeout=30) as response:
            text = response.read().decode()
        found = re.findall(
            r'apiserver_request_total\{verb="(\w+)",resource="([\w.]+)",subresource="(\w*)"\} (\d+)', text
        )
        return {(verb, res, sub): int(n) for verb, res, sub, n in found}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against the emulator; raises with its stderr when `check` fails."""
        result = subprocess.run(
            ["kubectl", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **self.env},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None) -> str:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        ns = ["-n", namespace] if namespace else []
        return self.kubectl("apply", *ns, "-f", "-", input=text).stdout

    def get_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def api_client(self):
        """A `kubernetes.client.ApiClient` built from the kubeconfig only."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    @staticmethod
    def new_namespace(prefix: str = "t") -> str:
        """A unique namespace name: tests share one emulator and isolate by namespace."""
        return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {"token": "kmock-dummy-token"}}],
        "contexts": [
            {"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": namespace}}
        ],
        "current-context": "kmock",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def start_kube(workdir: Path, resources: list[str] | None = None) -> KubeServer:
    """Start the emulator; `resources` are --resources arguments (default: the chart's CRDs, if any)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if resources is None:
        resources = [str(CHART_CRDS)] if CHART_CRDS.is_dir() and any(CHART_CRDS.iterdir()) else []
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Run by path, not `-m tests...`: that needs the repo root on sys.path, where our `operator/`
    # folder would shadow the standard library's `operator` (hence the package-dir mapping).
    argv = [python_exe(), str(Path(__file__).with_name("kmock_server.py")), "--port", str(port)]
    for source in resources:
        argv += ["--resources", source]
    process = ServerProcess("kmock", argv, workdir / "kmock.log")
    process.start(lambda: http_ok(url + "/version"), timeout=30)
    return KubeServer(url=url, kubeconfig=write_kubeconfig(workdir / "kubeconfig", url), process=process)
