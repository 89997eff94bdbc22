"""The segments of one attempt: what ended a Ray Train run, and whether the driver starts another. Pure.

The driver (`train.py`) runs an attempt as one or more *segments*, each a `TorchTrainer.fit()`
with the same run name and storage, resuming from the newest committed checkpoint. A segment
ends in one of four ways (`segment_end`):

- SUCCEEDED: the step budget is done;
- PREEMPTED: the workers were asked to stop (preStop stop file, SIGTERM) and committed their step
  (the worker returns the stop as an outcome, `preemption.StopRequested.outcome`); or the segment
  failed after such a commit (a preempted pod dying before Ray collected its return value), or
  Ray Train itself saw a preemption (a node drain: its `PreemptionError`, a preempted actor);
- RESIZED: room for more workers appeared and the workers committed their step to grow
  (`jobs/resize.py`);
- FAILED: anything else (a crash, OOM, a lost node).

Each is counted apart (`Tally`): failures against `parallel.max_failures` (per attempt, as Ray
Train's own `FailureConfig` would), preemptions against `parallel.max_preemptions` (per run: the
count starts from the newest checkpoint's, so it survives attempts), resizes unbounded (each one
grows the group; a shrink is a failure or a preemption). So Ray Train's `FailureConfig` is given
no retries of its own: every end comes back to the driver, which decides here (`next_segment`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sphinxx.jobs.preemption import PREEMPTED, RESIZE, STOP_KEY


class End(enum.StrEnum):
    SUCCEEDED = "succeeded"
    PREEMPTED = "preempted"
    RESIZED = "resized"
    FAILED = "failed"


@dataclass(frozen=True)
class Tally:
    """Planned stops of the run (from the newest checkpoint on) and failures of this attempt."""

    failures: int = 0
    preemptions: int = 0
    resizes: int = 0


@dataclass(frozen=True)
class Next:
    again: bool  # start another segment
    tally: Tally
    message: str  # one line for the driver log (and the summary's error when it gives up)


class PreemptionsExhausted(RuntimeError):
    """The run was preempted more often than `parallel.max_preemptions` allows."""

    def __init__(self, preemptions: int, bound: int):
        super().__init__(f"preempted {preemptions} times; parallel.max_preemptions is {bound}")
        self.preemptions, self.bound = preemptions, bound

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return type(self), (self.preemptions, self.bound)  # every exception of ours pickles (see Preempted)


def segment_end(returned: Any, failed: bool, preempted: bool) -> End:
    """What ended a segment: rank 0's return value, whether `fit()` failed, and whether a
    preemption is known (a preemption's commit landed during the segment, or Ray saw one). Pure."""
    if not failed:
        kind = returned.get(STOP_KEY) if isinstance(returned, Mapping) else None
        return {PREEMPTED: End.PREEMPTED, RESIZE: End.RESIZED}.get(str(kind), End.SUCCEEDED)
    return End.PREEMPTED if preempted else End.FAILED


def next_segment(end: End, tally: Tally, max_failures: int, max_preemptions: int) -> Next:
    """Count the end and decide whether the attempt goes on. Pure."""
    if end == End.SUCCEEDED:
        return Next(False, tally, "the step budget is done")
    if end == End.RESIZED:
        tally = replace(tally, resizes=tally.resizes + 1)
        return Next(True, tally, f"resize {tally.resizes}: restarting with as many workers as fit")
    if end == End.PREEMPTED:
        tally = replace(tally, preemptions=tally.preemptions + 1)
        if tally.preemptions > max_preemptions:
            return Next(False, tally, str(PreemptionsExhausted(tally.preemptions, max_preemptions)))
        bound = f"{tally.preemptions} of parallel.max_preemptions {max_preemptions}"
        return Next(True, tally, f"preemption {bound}: resuming from the committed step")
    tally = replace(tally, failures=tally.failures + 1)
    if tally.failures > max_failures:
        return Next(False, tally, f"failed {tally.failures} times; parallel.max_failures is {max_failures}")
    bound = f"{tally.failures} of parallel.max_failures {max_failures}"
    return Next(True, tally, f"failure {bound}: restarting from the newest committed checkpoint")
