"""Fixtures for the storage tests: a run prefix on each backend, local checkpoint folders, the fault proxy."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.storage.fault_proxy import FaultProxy

BACKENDS = ["memory", "file", "s3"]


def _prefix(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "memory":
        return f"memory://t-{uuid.uuid4().hex[:10]}/runs"
    if kind == "file":
        return "file://" + str(tmp_path / "store" / "runs")
    bucket = request.getfixturevalue("s3_bucket")  # moto server, reached through AWS_ENDPOINT_URL
    return f"s3://{bucket}/runs"


@pytest.fixture(params=BACKENDS)
def prefix(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A run prefix URI on memory://, file:// and the moto S3 server."""
    uri = _prefix(request.param, request, tmp_path)
    yield uri
    if request.param == "memory":
        import fsspec

        fs = fsspec.filesystem("memory")
        root = "/" + uri.split("://", 1)[1].split("/", 1)[0]
        if fs.exists(root):
            fs.rm(root, recursive=True)


@pytest.fixture
def s3_prefix(s3_bucket: str) -> str:
    return f"s3://{s3_bucket}/runs"


@pytest.fixture
def make_ckpt(tmp_path: Path) -> Callable[..., str]:
    """make_ckpt({"model/w.bin": 1000, ...}) -> a local folder with random files of those sizes."""

    def make(sizes: dict[str, int], name: str | None = None) -> str:
        root = tmp_path / (name or f"local-{uuid.uuid4().hex[:8]}")
        for rel, size in sizes.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(size))
        root.mkdir(parents=True, exist_ok=True)
        return str(root)

    return make


@pytest.fixture
def fault_proxy(s3_server) -> Iterator[FaultProxy]:
    proxy = FaultProxy(s3_server.endpoint_url)
    yield proxy
    proxy.close()


def read_tree(root: str) -> dict[str, bytes]:
    """Every file under a local folder, keyed by its '/'-separated relative path."""
    out = {}
    for here, _, names in os.walk(root):
        for name in names:
            path = os.path.join(here, name)
            out[os.path.relpath(path, root).replace(os.sep, "/")] = Path(path).read_bytes()
    return out
