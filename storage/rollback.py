"""Rollback: committed checkpoints newer than a step stop counting, without being deleted.

A run that diverged, or whose newest checkpoint is bad, resumes from an older committed step N.
Moving manifests aside (the old recipe) un-commits the newer steps, but loses the record of what
happened and leaves the files to be overwritten when training reaches those steps again. Here
the storage layer keeps a *rollback log*, `checkpoints/rollbacks.json`:

    {"format_version": 1, "rollbacks": [
      {"id": 1, "to_step": 20, "to_commit_id": "...", "created_at": ..., "reason": "...",
       "steps": [{"step": 30, "commit_id": "...", "archive": null}, ...]}]}

A committed checkpoint is *rolled back* when its (step, commit id) is listed in the log. Readers
skip it (`latest()`, `committed()`, retention), so the next attempt resumes from N; its manifest
and files stay where they are, and `sphinxx ckpt ls` shows them as `rolled-back`. The pair, not
the step alone, is the key: when the resumed run commits step 30 again, that new commit has
another commit id and counts.

Before a new commit of a rolled-back step can be written into `step-N/` (write-once), the old
one is *archived*: copied to `<run root>/rolled-back/step-N-<commit id>/` (manifest last, so an
interrupted copy is simply redone), then removed from `checkpoints/`, and its archive URI is
recorded in the log. So nothing a rollback marks is ever lost; only retention of the new
history, or a person, deletes anything.

Pure planning here (`plan_rollback`, the log's JSON); `CheckpointStore.rollback` and
`CheckpointStore.prepare` do the I/O.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import CheckpointCorruptError, CheckpointNotFoundError
from .manifest import FORMAT_VERSION, Manifest

ROLLBACKS_NAME = "rollbacks.json"
ARCHIVE_DIR = "rolled-back"


@dataclass(frozen=True)
class RolledBackStep:
    step: int
    commit_id: str
    archive: str | None = None  # where its files went once a new commit of the step replaced it


@dataclass(frozen=True)
class Rollback:
    id: int  # 1, 2, ... in the order they were made
    to_step: int
    to_commit_id: str
    created_at: float
    reason: str
    steps: tuple[RolledBackStep, ...]

    @property
    def step_numbers(self) -> tuple[int, ...]:
        return tuple(s.step for s in self.steps)


@dataclass(frozen=True)
class RollbackLog:
    """Every rollback of a run, oldest first (empty when the run was never rolled back)."""

    rollbacks: tuple[Rollback, ...] = field(default_factory=tuple)

    def marked(self) -> dict[tuple[int, str], RolledBackStep]:
        """(step, commit id) -> its entry, for every checkpoint any rollback marked."""
        return {(s.step, s.commit_id): s for r in self.rollbacks for s in r.steps}

    def is_rolled_back(self, manifest: Manifest) -> bool:
        return (manifest.step, manifest.commit_id) in self.marked()

    def with_archive(self, step: int, commit_id: str, archive: str) -> RollbackLog:
        """The same log with `archive` recorded for the marked checkpoint (step, commit id)."""
        updated = []
        for rollback in self.rollbacks:
            steps = tuple(
                replace(s, archive=archive) if (s.step, s.commit_id) == (step, commit_id) else s
                for s in rollback.steps
            )
            updated.append(replace(rollback, steps=steps))
        return RollbackLog(tuple(updated))

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "rollbacks": [
                {
                    "id": r.id,
                    "to_step": r.to_step,
                    "to_commit_id": r.to_commit_id,
                    "created_at": r.created_at,
                    "reason": r.reason,
                    "steps": [
                        {"step": s.step, "commit_id": s.commit_id, "archive": s.archive} for s in r.steps
                    ],
                }
                for r in self.rollbacks
            ],
        }
        return json.dumps(body, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, uri: str) -> RollbackLog:
        try:
            body = json.loads(data)
            version = body.get("format_version")
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise ValueError(
                    f"{uri} has format_version {version!r}; this sphinxx reads up to {FORMAT_VERSION}"
                )
            rollbacks = tuple(
                Rollback(
                    id=int(r["id"]),
                    to_step=int(r["to_step"]),
                    to_commit_id=str(r["to_commit_id"]),
                    created_at=float(r["created_at"]),
                    reason=str(r.get("reason", "")),
                    steps=tuple(
                        RolledBackStep(int(s["step"]), str(s["commit_id"]), s.get("archive"))
                        for s in r["steps"]
                    ),
                )
                for r in body["rollbacks"]
            )
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            # A log nobody can read must not silently resurrect rolled-back checkpoints.
            raise CheckpointCorruptError(f"malformed rollback log {uri}: {err}", uri, [uri]) from err
        return cls(rollbacks)


def plan_rollback(
    committed: Sequence[Manifest], log: RollbackLog, to_step: int, reason: str = "", now: float | None = None
) -> RollbackLog:
    """The log with one more rollback: every counting checkpoint newer than `to_step` marked. Pure.

    `committed`: the checkpoints that count now (rolled-back ones already left out). Refused
    (CheckpointNotFoundError) unless `to_step` is one of them; a rollback that marks nothing is
    refused too (ValueError), so a repeated request is not recorded twice.
    """
    by_step = {m.step: m for m in committed}
    target = by_step.get(to_step)
    if target is None:
        steps = ", ".join(str(s) for s in sorted(by_step)) or "none"
        raise CheckpointNotFoundError(
            f"step {to_step} is not a committed checkpoint of this run (committed: {steps})", str(to_step)
        )
    newer = sorted((m for m in committed if m.step > to_step), key=lambda m: m.step)
    if not newer:
        raise ValueError(f"nothing to roll back: step {to_step} is already the newest committed checkpoint")
    rollback = Rollback(
        id=1 + max((r.id for r in log.rollbacks), default=0),
        to_step=to_step,
        to_commit_id=target.commit_id,
        created_at=time.time() if now is None else now,
        reason=reason,
        steps=tuple(RolledBackStep(m.step, m.commit_id) for m in newer),
    )
    return RollbackLog((*log.rollbacks, rollback))
