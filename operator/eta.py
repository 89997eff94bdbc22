"""The sweep's ETA: a roll-up of its points' live progress. Pure.

Each unfinished point gets an estimate of the seconds it still needs:

- a Running point: its own ETA (`status.progress.etaSeconds`, from its job's progress record);
- a point that reported progress but is not Running now (Resuming, Pending after a retry,
  Suspended): its remaining steps at its last rate;
- a point that has not reported yet: the median full length of the points of its model that
  have (steps x seconds per step), scaled by its data fraction over theirs (steps follow the
  data with `train.steps: 0`, the sweep default); a point whose model has none gets no estimate.

The points are then laid out on the sweep's slots (`maxParallelRuns`, 0: all at once) in the
order the sweep admits them (smallest first): the points that hold a slot now continue, each
waiting point starts when the first slot frees. The ETA is when the last one ends. Points
without an estimate count as zero, so the ETA is then a lower bound, marked with a trailing `+`
and said in the note. The figure is rounded (to a minute under two hours, five minutes under a
day, an hour beyond) so that a counting-down ETA rewrites the sweep's status about once a minute,
not on every roll-up.
"""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sphinxx.schema.progress import clock
from sphinxx.schema.status import TERMINAL_RUN_PHASES, RunPhase

# Phases of a point that holds one of the sweep's slots (it has a RayJob, or is about to).
ACTIVE = (RunPhase.PENDING, RunPhase.RUNNING, RunPhase.RESUMING, RunPhase.SUSPENDED)


@dataclass(frozen=True)
class PointEta:
    """What the roll-up knows of one point."""

    model: str
    fraction: float
    phase: RunPhase
    eta_seconds: float | None = None  # its own ETA, while Running
    step: int | None = None
    total_steps: int | None = None
    seconds_per_step: float | None = None

    @property
    def length(self) -> float | None:
        """The whole run's seconds at its rate, when it reported both."""
        if self.total_steps and self.seconds_per_step:
            return self.total_steps * self.seconds_per_step
        return None

    @property
    def left(self) -> float | None:
        """Seconds it still needs by its own figures."""
        if self.phase == RunPhase.RUNNING and self.eta_seconds is not None:
            return self.eta_seconds
        if self.total_steps and self.seconds_per_step and self.step is not None:
            return max(self.total_steps - self.step, 0) * self.seconds_per_step
        return None


@dataclass(frozen=True)
class SweepEta:
    seconds: int | None
    text: str | None  # H:MM:SS, with a trailing + when it is a lower bound
    note: str


def point_eta(model: str, fraction: float, phase: RunPhase, progress: dict[str, Any] | None) -> PointEta:
    """A point from its TrainingRun's `status.progress` (camelCase, as the API server holds it)."""
    p = progress or {}

    def number(key: str) -> float | None:
        value = p.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    step, total = number("step"), number("totalSteps")
    return PointEta(
        model,
        fraction,
        phase,
        eta_seconds=number("etaSeconds"),
        step=int(step) if step is not None else None,
        total_steps=int(total) if total else None,
        seconds_per_step=number("secondsPerStep"),
    )


def rounded(seconds: float) -> int:
    """Up to a minute under two hours, five minutes under a day, an hour beyond."""
    unit = 60 if seconds < 7200 else 300 if seconds < 86_400 else 3600
    return int(-(-seconds // unit) * unit)


def _estimate(point: PointEta, lengths: dict[str, list[tuple[float, float]]]) -> float | None:
    """Seconds the point still needs: its own figures, else its model's (scaled by data fraction)."""
    own = point.left
    if own is not None:
        return own
    known = lengths.get(point.model)
    if not known:
        return None
    return statistics.median(length * point.fraction / fraction for length, fraction in known)


def sweep_eta(points: Sequence[PointEta], slots: int, suspended: bool = False) -> SweepEta:
    """When the sweep's last point should end, from now (see the module docstring)."""
    unfinished = [p for p in points if p.phase not in TERMINAL_RUN_PHASES]
    if not unfinished:
        return SweepEta(None, None, "every point has finished")
    if suspended:
        return SweepEta(None, None, "the sweep is suspended")
    lengths: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        if p.length is not None and p.fraction > 0:
            lengths.setdefault(p.model, []).append((p.length, p.fraction))
    if not lengths:
        return SweepEta(None, None, "no point has reported progress yet")
    estimates = [(p, _estimate(p, lengths)) for p in unfinished]
    unknown = sum(1 for _, e in estimates if e is None)
    active = [e or 0.0 for p, e in estimates if p.phase in ACTIVE]
    waiting = [e or 0.0 for p, e in estimates if p.phase not in ACTIVE]
    width = max(slots if slots > 0 else len(unfinished), len(active), 1)
    free = sorted(active) + [0.0] * (width - len(active))
    heapq.heapify(free)
    for seconds in waiting:
        heapq.heappush(free, heapq.heappop(free) + seconds)
    total = rounded(max(free))
    note = f"{len(unfinished)} point(s) to go on {width} slot(s)"
    if unknown:
        note += f"; {unknown} without an estimate yet (their model has reported no progress): a lower bound"
    return SweepEta(total, clock(total) + ("+" if unknown else ""), note)
