"""Step arithmetic of a run: how many steps, how a global batch is split, the learning rate.

Everything here is a pure function of the config, the step and the current world size, so an
elastic restart at another size (or a retry) recomputes the same schedule without any state.

Batch plan (orchestration.md 3.4, sphinx_x_model.md 8-9): the global batch G stays the same at
any world size W. Each optimizer step does `accum = ceil(G / (micro * W))` forward/backward
passes on every rank; when G is not a multiple of micro * W the last micro-batches are short
(possibly empty on some ranks). That changes no result, because the loss is the sum of
per-token CE over the whole global batch divided by the global number of target tokens, not a
mean of micro-batch means.

Learning rate (sphinx_x_model.md 9): linear warmup over the first `warmup` share of the steps,
then cosine (or linear, or constant) decay to `min_lr`, updated every optimizer step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULE_KINDS = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class BatchPlan:
    """How one global batch is dealt to `world_size` ranks of `accum` micro-steps each."""

    global_batch: int  # sequences per optimizer step, whatever the world size
    micro_batch: int  # sequences per forward/backward on one rank (the last ones may be short)
    world_size: int
    accum: int  # micro-steps per optimizer step on every rank (equal on all ranks: collectives)

    @property
    def slots(self) -> int:
        """Micro-batch slots per optimizer step over all ranks."""
        return self.world_size * self.accum

    def rank_share(self, rank: int) -> int:
        """Sequences rank `rank` processes per optimizer step (sums to global_batch)."""
        base, extra = divmod(self.global_batch, self.world_size)
        return base + (1 if rank < extra else 0)

    def micro_sizes(self, rank: int) -> list[int]:
        """Sizes of rank `rank`'s `accum` micro-batches: full ones first, then the remainder, then 0s."""
        share = self.rank_share(rank)
        sizes = []
        for _ in range(self.accum):
            size = min(self.micro_batch, share)
            sizes.append(size)
            share -= size
        assert share == 0, "accum too small for this rank's share"
        return sizes

    def rank_slice(self, rank: int) -> tuple[int, int]:
        """[start, stop) of rank `rank`'s contiguous share of a global batch's sample list."""
        start = sum(self.rank_share(r) for r in range(rank))
        return start, start + self.rank_share(rank)


def batch_plan(global_batch: int, micro_batch: int, world_size: int) -> BatchPlan:
    """The accumulation plan for one world size; ValueError when the batch cannot be dealt."""
    if world_size < 1 or micro_batch < 1 or global_batch < 1:
        raise ValueError(
            f"global_batch ({global_batch}), micro_batch ({micro_batch}) and world size ({world_size}) "
            "must all be >= 1"
        )
    if global_batch < world_size:
        raise ValueError(
            f"train.global_batch ({global_batch}) is smaller than the world size ({world_size}): "
            "some workers would get no data; raise global_batch or lower parallel.max_workers"
        )
    share = math.ceil(global_batch / world_size)
    return BatchPlan(global_batch, micro_batch, world_size, accum=math.ceil(share / micro_batch))


def total_steps(configured_steps: int, num_samples: int, epochs: float, global_batch: int) -> int:
    """`configured_steps` if set, else ceil(samples * epochs / global_batch) (one pass by default)."""
    if configured_steps > 0:
        return configured_steps
    if num_samples <= 0:
        raise ValueError("the data mixture is empty: no samples to derive train.steps from")
    return max(1, math.ceil(num_samples * epochs / global_batch))


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
