"""Which documents of a manifest file are ours, checked as the API server checks them.

A file given to `sphinxx sweep plan/check/run` or `sphinxx validate` may hold other documents
beside ours (a Secret, a ConfigMap): those are skipped. A document that claims to be ours in part
is refused, because `kubectl apply` would refuse it: a ScalingSweep or TrainingRun under another
apiVersion (`apps/v1`, `sphinxx.dev/v9`), or a kind the group does not serve. Offline, the CLI
says what the API server would, instead of planning a sweep the cluster never accepts.
"""

from __future__ import annotations

from typing import Any

from .fields import SchemaError
from .resources import API_VERSION, GROUP, KINDS


def kind_of(doc: Any, where: str) -> str | None:
    """The kind of one of our documents, None for another API's; SchemaError for a wrong claim.

    `where` names the document in messages (`document 2`; the caller names the file).
    """
    if not isinstance(doc, dict):
        raise SchemaError("", f"a manifest must be a mapping (apiVersion, kind, metadata, spec) ({where})")
    api, kind = doc.get("apiVersion"), doc.get("kind")
    group = api.split("/", 1)[0] if isinstance(api, str) and "/" in api else None
    if kind in KINDS and api != API_VERSION:
        raise SchemaError(
            "apiVersion", f"a {kind} is served as {API_VERSION} (its CRD); got {api!r} ({where})"
        )
    if group == GROUP and kind not in KINDS:
        raise SchemaError("kind", f"{API_VERSION} serves {' and '.join(KINDS)}; got {kind!r} ({where})")
    if group == GROUP and api != API_VERSION:
        raise SchemaError("apiVersion", f"{GROUP} serves {API_VERSION} only; got {api!r} ({where})")
    return str(kind) if kind in KINDS else None


def name_of(doc: dict[str, Any], where: str) -> str:
    """metadata.name of one of our documents (required: it names every point and object)."""
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise SchemaError("metadata.name", f"is required ({where})")
    return name
