"""`sphinxx validate FILE...`: admit manifests offline, exactly as the operator admits them.

Every ScalingSweep and TrainingRun in the files is checked before anyone runs `kubectl apply`:
its apiVersion and kind as the CRDs serve them, its name, no credentials anywhere, and its spec
through the operator's own admission (`sphinxx.schema.admission.admit_run`; a sweep through
`sphinxx.sweep.points.admit_sweep`, which admits every point it expands to). Documents of other
APIs in the same file (a Secret, a ConfigMap) are skipped and said so. No cluster, storage or
MLflow is contacted (`sphinxx sweep check` probes the storage).

One line per document (`ok ScalingSweep/tiny: 4 points` or `error: FILE: ...: FIELD: RULE`);
the exit status is 2 when any document is refused. `--storage-uri` stands in for the operator's
default checkpoint prefix (`storage.uri` of a spec that sets none).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from sphinxx.schema.admission import admit_run
from sphinxx.schema.documents import load_yaml_all, read_document
from sphinxx.schema.fields import SchemaError, deep_merge
from sphinxx.schema.manifests import kind_of, name_of
from sphinxx.sweep.points import admit_sweep, points


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate", help="check ScalingSweep and TrainingRun manifests offline, as the operator admits them"
    )
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="YAML manifest files (several documents each)"
    )
    parser.add_argument(
        "--storage-uri",
        default=None,
        help="checkpoint prefix assumed where a spec sets none (the operator's default; e.g. s3://bucket/sweeps)",
    )
    parser.set_defaults(func=_validate)


def _validate(args: argparse.Namespace) -> int:
    refused = 0
    for path in args.files:
        for line, ok in validate_file(path, args.storage_uri):
            print(line, file=sys.stdout if ok else sys.stderr, flush=True)
            refused += not ok
    return 2 if refused else 0


def validate_file(path: str, storage_uri: str | None) -> list[tuple[str, bool]]:
    """(one line, admitted) per document of ours in `path`; a file that cannot be read is one line."""
    try:
        docs = _documents(path)
    except SchemaError as err:  # the reader's messages name the file
        return [(f"error: {err}" if path in str(err) else f"error: {path}: {err}", False)]
    out = []
    for number, doc in enumerate(docs, 1):
        where = f"document {number}"
        try:
            kind = kind_of(doc, where)
            if kind is None:
                out.append(
                    (f"skip  {path}: {where} ({doc.get('kind', '?')}) is not a sphinxx.dev object", True)
                )
                continue
            name = name_of(doc, where)
            spec = doc.get("spec") or {}
            out.append((f"ok    {kind}/{name}: {_admit(kind, name, spec, storage_uri)}", True))
        except SchemaError as err:
            if err.path.endswith("storage.uri") and "is required" in err.reason and not storage_uri:
                err = SchemaError(
                    err.path,
                    f"{err.reason} (the operator fills its default prefix; say it with --storage-uri)",
                )
            label = (
                f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '?')}"
                if isinstance(doc, dict)
                else where
            )
            out.append((f"error: {path}: {label}: {err}", False))
    if not out:
        out.append((f"error: {path}: holds no ScalingSweep or TrainingRun", False))
    return out


def _admit(kind: str, name: str, spec: Any, storage_uri: str | None) -> str:
    defaults = _storage_default(storage_uri)
    if kind == "ScalingSweep":
        admitted = admit_sweep(name, spec, defaults)
        return f"{len(points(name, admitted.spec))} points"
    run = admit_run(name, defaults(spec) if isinstance(spec, dict) else spec)
    return f"{run.config.model.flavor}, {run.bounds[0]}-{run.bounds[1]} workers"


def _storage_default(storage_uri: str | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(spec: dict[str, Any]) -> dict[str, Any]:
        if not storage_uri or not isinstance(spec.get("config"), (dict, type(None))):
            return spec
        return {**spec, "config": deep_merge({"storage": {"uri": storage_uri}}, spec.get("config") or {})}

    return apply


def _documents(path: str) -> list[Any]:
    # The CLI's one safe reader: bounded size, alias expansion and depth; duplicate keys refused.
    return [d for d in load_yaml_all(read_document(path, "manifest"), path) if d is not None]
