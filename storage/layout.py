"""Where everything of one run lives under its prefix (docs/storage.md, "Layout").

```
<prefix>/<run-id>/                      the run root; stable across attempts
  config.yaml                           the resolved run config
  run.json                              the run manifest (run id, config hash, code version, attempts)
  progress.json                         the running job's progress record, overwritten in place
  ray/                                  Ray Train's storage_path (pointer checkpoints only)
  checkpoints/
    step-000012000/                     write-once, named by the global step (9 digits)
      <files of every writer>           e.g. model/..., optim/rank-00003.pt, extra/...
      _writers/rank-00003.json          what each writer wrote (path, size, sha256), read by the committer
      manifest.json                     the commit marker, written last
    latest.json                         pointer to the newest commit; an optimisation only
    rollbacks.json                      the rollback log: commits that no longer count (rollback.py)
  rolled-back/step-000012000-<commit>/  a rolled-back checkpoint, moved here when its step is committed again
```

Pure string functions: no I/O here, so the operator can compute URIs cheaply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import uri as uri_mod

STEP_DIGITS = 9
MANIFEST_NAME = "manifest.json"
WRITERS_DIR = "_writers"
RESERVED_NAMES = (MANIFEST_NAME, WRITERS_DIR)
_STEP_RE = re.compile(r"^step-(\d+)$")
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


def step_name(step: int) -> str:
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    return f"step-{step:0{STEP_DIGITS}d}"


def parse_step_name(name: str) -> int | None:
    match = _STEP_RE.match(name.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def validate_run_id(run_id: str) -> str:
    if not _RUN_ID_RE.match(run_id or ""):
        raise ValueError(
            f"invalid run id {run_id!r}: use letters, digits, '.', '_' or '-' (no '/'), "
            "starting with a letter or digit"
        )
    return run_id


@dataclass(frozen=True)
class RunLayout:
    root: str  # normalized URI of <prefix>/<run-id>

    @classmethod
    def for_run(cls, prefix: str, run_id: str) -> RunLayout:
        return cls(uri_mod.join(uri_mod.normalize(prefix), validate_run_id(run_id)))

    @property
    def run_id(self) -> str:
        return self.root.rsplit("/", 1)[-1]

    @property
    def checkpoints(self) -> str:
        return uri_mod.join(self.root, "checkpoints")

    @property
    def latest(self) -> str:
        return uri_mod.join(self.checkpoints, "latest.json")

    @property
    def rollbacks(self) -> str:
        return uri_mod.join(self.checkpoints, "rollbacks.json")

    def archive_dir(self, step: int, commit_id: str) -> str:
        """Where a rolled-back checkpoint goes when a new commit of its step needs the folder."""
        return uri_mod.join(self.root, "rolled-back", f"{step_name(step)}-{commit_id[:12]}")

    @property
    def run_config(self) -> str:
        return uri_mod.join(self.root, "config.yaml")

    @property
    def progress(self) -> str:
        """The running job's progress record (sphinxx.schema.progress); the operator's live status."""
        return uri_mod.join(self.root, "progress.json")

    @property
    def run_manifest(self) -> str:
        return uri_mod.join(self.root, "run.json")

    @property
    def ray_storage(self) -> str:
        return uri_mod.join(self.root, "ray")

    def step_dir(self, step: int) -> str:
        return uri_mod.join(self.checkpoints, step_name(step))

    def manifest(self, step: int) -> str:
        return uri_mod.join(self.step_dir(step), MANIFEST_NAME)

    def writers_dir(self, step: int) -> str:
        return uri_mod.join(self.step_dir(step), WRITERS_DIR)

    def writer_record(self, step: int, rank: int) -> str:
        return uri_mod.join(self.writers_dir(step), f"rank-{rank:05d}.json")

    def file(self, step: int, relpath: str) -> str:
        return uri_mod.join(self.step_dir(step), relpath)


def checkpoint_relpath(relpath: str) -> str:
    """A writer's file name, checked against the names the protocol reserves."""
    clean = uri_mod.validate_relpath(relpath)
    if clean.split("/", 1)[0] in RESERVED_NAMES:
        raise ValueError(f"{relpath!r} is reserved by the checkpoint protocol; pick another file name")
    return clean


def locate(uri: str) -> tuple[RunLayout, int | None]:
    """The run root (and step, if named) from any URI a user may paste.

    Accepts `<root>`, `<root>/checkpoints`, `<root>/checkpoints/step-N[/manifest.json]`
    and `<root>/checkpoints/latest.json`.
    """
    norm = uri_mod.normalize(uri)
    parts = norm.split("/")
    step = None
    if parts[-1] in (MANIFEST_NAME, "latest.json"):
        parts = parts[:-1]
    if (found := parse_step_name(parts[-1])) is not None and len(parts) >= 2 and parts[-2] == "checkpoints":
        step, parts = found, parts[:-1]
    if parts[-1] == "checkpoints":
        parts = parts[:-1]
    root = "/".join(parts)
    if root.endswith("://") or (root.startswith("s3://") and "/" not in root[len("s3://") :]):
        raise ValueError(
            f"{uri!r} names a bucket, not a run: give <prefix>/<run-id>, e.g. s3://bucket/sweeps/run-1"
        )
    return RunLayout(root), step
