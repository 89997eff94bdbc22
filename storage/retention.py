"""Which checkpoints to keep: pure decisions over committed manifests
(docs/storage.md, "Retention and partial-folder cleanup").

Kept, each for a stated reason:
- the newest committed checkpoint, always (it is what a resume reads);
- the last `keep_last` committed (at least 2: a reader may still be restoring
  the previous one while the newest lands; torchtitan rejects keep_latest_k=1
  for the same reason);
- the best `keep_best` by `metric` (only when a metric is named; checkpoints
  without that metric do not compete);
- milestones: every step divisible by `milestone_every`, and the run's final
  checkpoint (scaling-law analysis reads them forever);
- any `protected` step (whatever `latest.json` points to).

Uncommitted folders are not checkpoints and never count towards any of these:
they are removed by `plan_partial_gc` once older than a grace period, because a
folder younger than that may be one a live writer is filling. The store
executes a plan by deleting each victim's manifest first (it stops counting as
committed at once), then its files; a crash in between leaves an uncommitted
folder for the next gc.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .manifest import Manifest


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 3  # newest committed checkpoints kept (>= 2)
    keep_best: int = 1  # best checkpoints by `metric` kept; ignored when metric is None
    metric: str | None = None  # manifest metric to rank by, e.g. "val_loss"
    mode: Literal["min", "max"] = "min"  # whether lower or higher `metric` is better
    milestone_every: int = 0  # keep every step divisible by this forever; 0 = no milestones
    keep_final: bool = True  # keep the checkpoint whose manifest says final=true

    def __post_init__(self) -> None:
        if self.keep_last < 2:
            raise ValueError(
                f"keep_last must be >= 2, got {self.keep_last}: a reader may still be restoring the "
                "previous checkpoint while the newest one is committed"
            )
        if self.keep_best < 0:
            raise ValueError(f"keep_best must be >= 0, got {self.keep_best}")
        if self.milestone_every < 0:
            raise ValueError(
                f"milestone_every must be >= 0 (0 disables milestones), got {self.milestone_every}"
            )
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")


@dataclass(frozen=True)
class CheckpointSummary:
    """What retention needs to know of one committed checkpoint."""

    step: int
    metrics: Mapping[str, Any] = field(default_factory=dict)
    final: bool = False

    @classmethod
    def of(cls, manifest: Manifest) -> CheckpointSummary:
        return cls(manifest.step, dict(manifest.metadata.metrics), manifest.metadata.final)


@dataclass(frozen=True)
class RetentionPlan:
    keep: Mapping[int, tuple[str, ...]]  # step -> why it is kept
    delete: tuple[int, ...]  # ascending


def plan_retention(
    checkpoints: Sequence[CheckpointSummary], policy: RetentionPolicy, protected: Iterable[int] = ()
) -> RetentionPlan:
    """Decide which committed checkpoints to keep and which to delete."""
    by_step = {c.step: c for c in checkpoints}
    if len(by_step) != len(checkpoints):
        raise ValueError("duplicate steps in the checkpoint list")
    steps = sorted(by_step)
    reasons: dict[int, list[str]] = {s: [] for s in steps}
    if steps:
        reasons[steps[-1]].append("newest")
    for step in steps[-policy.keep_last :]:
        reasons[step].append(f"last-{policy.keep_last}")
    for step in _best(by_step.values(), policy):
        reasons[step].append(f"best-{policy.keep_best}-{policy.metric}")
    for step in steps:
        if policy.milestone_every and step % policy.milestone_every == 0:
            reasons[step].append(f"milestone-every-{policy.milestone_every}")
        if policy.keep_final and by_step[step].final:
            reasons[step].append("final")
    for step in protected:
        if step in reasons:
            reasons[step].append("protected")
    keep = {s: tuple(r) for s, r in reasons.items() if r}
    return RetentionPlan(keep, tuple(s for s in steps if s not in keep))


def _best(checkpoints: Iterable[CheckpointSummary], policy: RetentionPolicy) -> list[int]:
    if policy.metric is None or policy.keep_best == 0:
        return []
    scored = [
        (float(c.metrics[policy.metric]), c.step)
        for c in checkpoints
        if isinstance(c.metrics.get(policy.metric), int | float)  # not a record such as `benchmarks`
    ]
    sign = 1 if policy.mode == "min" else -1
    # Ties go to the newer step: it has seen more data for the same score.
    scored.sort(key=lambda vs: (sign * vs[0], -vs[1]))
    return [step for _, step in scored[: policy.keep_best]]


@dataclass(frozen=True)
class PartialFolder:
    step: int
    newest_mtime: float | None  # newest object inside; None when the store gives no time (treated as old)


def plan_partial_gc(partials: Sequence[PartialFolder], now: float, grace_s: float) -> tuple[int, ...]:
    """Uncommitted step folders old enough that no live writer can be filling them."""
    if grace_s < 0:
        raise ValueError(f"grace period must be >= 0 seconds, got {grace_s}")
    return tuple(
        sorted(p.step for p in partials if p.newest_mtime is None or now - p.newest_mtime >= grace_s)
    )
