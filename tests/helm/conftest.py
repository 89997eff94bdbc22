"""Shared helpers for the chart tests: load helm/sphinxx once, render it offline with values.

Rendering uses helm-python-sdk (Helm v4 as a shared library, no helm binary, no cluster):
`Chart.render()` applies values.schema.json exactly as `helm install` would, so a value the
schema rejects raises `helm_python.HelmValuesError` here too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "sphinxx"
RELEASE = "sphinxx"
NAMESPACE = "sphinxx-system"


class Rendered:
    """The manifests of one render: every object with the template that produced it."""

    def __init__(self, files: dict[str, str]):
        self.files = files
        self.objects: list[tuple[str, dict[str, Any]]] = []
        for path, text in sorted(files.items()):
            if not path.endswith(".yaml"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.objects.append((path.rsplit("/", 1)[-1], doc))

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [obj for _, obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [obj for obj in self.kinds(kind) if obj["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, (
            f"expected one {kind} named *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
        )
        return found[0]

    @property
    def notes(self) -> str:
        return next(text for path, text in self.files.items() if path.endswith("NOTES.txt"))


@pytest.fixture(scope="session")
def chart() -> Iterator[Any]:
    with helm.Chart.load(str(CHART_DIR)) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: Any):
    def _render(values: dict[str, Any] | None = None, namespace: str = NAMESPACE) -> Rendered:
        return Rendered(chart.render(values or {}, name=RELEASE, namespace=namespace, is_install=True))

    return _render
