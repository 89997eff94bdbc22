"""The learning-rate schedule: a pure function of the step, so no scheduler state to checkpoint.

An elastic restart at another world size (or a retry) recomputes the same value for every step.
(How a global batch is dealt over ranks and accumulation steps is the elastic sampler's job:
`jobs.data.sampler`.)

Learning rate (docs/training.md, "Training recipe"): linear warmup over the first `warmup` share of the steps,
then cosine (or linear, or constant) decay to `min_lr`, updated every optimizer step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULE_KINDS = ("cosine", "linear", "constant")


def warmup_steps(total: int, warmup: float) -> int:
    """Warmup length in steps: the `warmup` share of all steps, at least 1 when warmup > 0."""
    if warmup <= 0:
        return 0
    return min(total, max(1, round(warmup * total)))


def lr_at(step: int, total: int, peak: float, min_lr: float, warmup: float, kind: str = "cosine") -> float:
    """Learning rate for the optimizer step with 0-based index `step` of `total`.

    Warmup ramps linearly to `peak` at the last warmup step (the first step never uses lr 0, so
    no step is wasted); the decay reaches `min_lr` at the last step.
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}")
    if not 0 <= step < total:
        raise ValueError(f"step {step} is outside the schedule of {total} steps")
    n_warm = warmup_steps(total, warmup)
    if step < n_warm:
        return peak * (step + 1) / n_warm
    if kind == "constant":
        return peak
    decay_steps = total - n_warm
    progress = (step - n_warm) / (decay_steps - 1) if decay_steps > 1 else 1.0
    if kind == "linear":
        return peak + (min_lr - peak) * progress
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Schedule:
    """The learning-rate schedule of one run; `state_dict` goes into checkpoints as a check."""

    total: int
    peak: float
    min_lr: float = 0.0
    warmup: float = 0.0
    kind: str = "cosine"

    def __call__(self, step: int) -> float:
        return lr_at(step, self.total, self.peak, self.min_lr, self.warmup, self.kind)

    def state_dict(self) -> dict:
        return {
            "total": self.total,
            "peak": self.peak,
            "min_lr": self.min_lr,
            "warmup": self.warmup,
            "kind": self.kind,
        }
