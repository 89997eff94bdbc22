"""The manifest (commit marker) and writer records: what a checkpoint contains.

A checkpoint is committed exactly when `step-N/manifest.json` exists. The
manifest lists every file with its size and sha256, so readers check a
checkpoint without trusting the listing, and it carries the layout the
trainer needs to restore at another world size (docs/training.md, "Checkpoints at any world size") plus the
metrics retention ranks by. Writer records are the per-rank halves the
committer merges; they are never read by anyone else.

JSON is written with sorted keys and a `format_version`; a reader refuses a
newer version instead of guessing.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import CheckpointCorruptError
from .hashing import FileDigest

# 2: a file entry may carry `part_size` (its sha256 is then the part tree, hashing.PartTreeDigest).
# Format 1 manifests read as before: every entry's sha256 is of the whole file.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the step folder, '/'-separated
    size: int  # bytes
    sha256: str  # hex digest: of the whole file, or with `part_size` its part tree (hashing.PartTreeDigest)
    rank: int = 0  # the writer that produced it
    part_size: int | None = None  # set for files uploaded in parts whose sha256 is their part tree

    @property
    def digest(self) -> FileDigest:
        return FileDigest(self.sha256, self.part_size)

    def to_dict(self) -> dict[str, Any]:
        """As stored: `part_size` only when set, so whole-file entries read as format 1 did."""
        body = asdict(self)
        if self.part_size is None:
            del body["part_size"]
        return body


@dataclass(frozen=True)
class WriterRecord:
    """What one writer (one rank) put into a step folder."""

    step: int
    rank: int
    num_writers: int
    attempt: int
    writer_id: str  # unique per writer object: tells a retried writer from a stale one
    files: tuple[FileEntry, ...]
    finished_at: float

    def to_json(self) -> bytes:
        body = asdict(self) | {"format_version": FORMAT_VERSION, "files": [f.to_dict() for f in self.files]}
        return json.dumps(body, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, uri: str) -> WriterRecord:
        body = _load(data, uri)
        files = tuple(FileEntry(**f) for f in body.pop("files"))
        body.pop("format_version")
        return cls(files=files, **body)


@dataclass(frozen=True)
class CommitMetadata:
    """What the trainer tells the store about a checkpoint; stored in the manifest as is."""

    world_size: int | None = None  # ranks that trained this step (may differ from num_writers)
    zero_stage: int | None = None  # DeepSpeed ZeRO stage of the optimizer shards
    ep_size: int | None = None  # expert-parallel size
    dp_size: int | None = None  # data-parallel size
    # e.g. {"val_loss": 2.31}; retention ranks by these. A value may also be a record of numbers and
    # strings (the job's `benchmarks`: docs/training.md, "Benchmarks in every point").
    metrics: Mapping[str, Any] = field(default_factory=dict)
    config_hash: str | None = None  # sha256 of the resolved run config
    code_version: str | None = None  # git sha or package version
    final: bool = False  # the run's last checkpoint: retention keeps it forever
    extra: Mapping[str, Any] = field(default_factory=dict)  # anything else JSON-serialisable

    @classmethod
    def coerce(cls, value: CommitMetadata | Mapping[str, Any] | None) -> CommitMetadata:
        if value is None:
            return cls()
        if isinstance(value, CommitMetadata):
            return value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"unknown checkpoint metadata {unknown}: use {sorted(known)} (free-form goes in 'extra')"
            )
        return cls(**value)

    def __post_init__(self) -> None:
        for name, metric in self.metrics.items():
            if isinstance(metric, Mapping):
                _check_record(name, metric)
            elif not _finite(metric):
                raise ValueError(f"metric {name!r} must be a finite number, got {metric!r}")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_record(path: str, record: Mapping[str, Any]) -> None:
    """A metric may be a record (the job's `benchmarks`): string keys, leaves finite numbers or strings."""
    for key, value in record.items():
        where = f"{path}.{key}"
        if not isinstance(key, str):
            raise ValueError(f"metric {path!r}: keys must be strings, got {key!r}")
        if isinstance(value, Mapping):
            _check_record(where, value)
        elif not (_finite(value) or isinstance(value, str)):
            raise ValueError(f"metric {where!r} must be a finite number or a string, got {value!r}")


@dataclass(frozen=True)
class Manifest:
    run_id: str
    step: int
    attempt: int
    commit_id: str  # unique per commit call: lets a retried PUT recognise its own manifest
    created_at: float  # seconds since the epoch
    num_writers: int
    files: tuple[FileEntry, ...]
    metadata: CommitMetadata = field(default_factory=CommitMetadata)
    format_version: int = FORMAT_VERSION

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def metrics(self) -> Mapping[str, Any]:
        return self.metadata.metrics

    def files_of(self, ranks: set[int] | None) -> tuple[FileEntry, ...]:
        return self.files if ranks is None else tuple(f for f in self.files if f.rank in ranks)

    def to_json(self) -> bytes:
        body = {
            "format_version": self.format_version,
            "run_id": self.run_id,
            "step": self.step,
            "attempt": self.attempt,
            "commit_id": self.commit_id,
            "created_at": self.created_at,
            "created": dt.datetime.fromtimestamp(self.created_at, dt.UTC).isoformat(),
            "num_writers": self.num_writers,
            "files": [f.to_dict() for f in self.files],
            **asdict(self.metadata),
        }
        return json.dumps(body, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, uri: str) -> Manifest:
        body = _load(data, uri)
        try:
            meta = {f.name: body[f.name] for f in fields(CommitMetadata) if f.name in body}
            return cls(
                run_id=body["run_id"],
                step=int(body["step"]),
                attempt=int(body["attempt"]),
                commit_id=body["commit_id"],
                created_at=float(body["created_at"]),
                num_writers=int(body["num_writers"]),
                files=tuple(FileEntry(**f) for f in body["files"]),
                metadata=CommitMetadata(**meta),
                format_version=body["format_version"],
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointCorruptError(f"malformed manifest {uri}: {err}", uri, [uri]) from err


def _load(data: bytes, uri: str) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointCorruptError(f"{uri} is not valid JSON: {err}", uri, [uri]) from err
    if not isinstance(body, dict):
        raise CheckpointCorruptError(f"{uri} is not a JSON object", uri, [uri])
    version = body.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{uri} has format_version {version!r}; "
            f"this sphinxx reads up to {FORMAT_VERSION}: upgrade sphinxx"
        )
    return body
