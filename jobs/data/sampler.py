"""The elastic sampler: global batches of the mixture stream dealt over ranks and micro-steps.

Global batch i is stream positions [i*G, (i+1)*G) whatever the world size. With W data-parallel
ranks, micro-batch m and A = ceil(G / (W m)) accumulation steps, the batch is cut into W*A
consecutive slots (m positions each when W m divides G, else sizes differing by at most one,
never more than m); rank r takes slot a*W + r at micro-step a. The union over ranks and micro-steps is
exactly the global batch, so the only state to checkpoint is the index of the next global batch.
A run resumed at a different world size (same G) continues with exactly the samples not yet
seen: no repeats, no gaps (docs/training.md, "Elastic sampler", globally indexed).

The sampler runs wherever the keys are consumed (a DataLoader worker resolves only its own
micro-batches); resolution is a few numpy operations per micro-batch (see `Mixture.locate`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from sphinxx.jobs.data.mixture import Mixture

STATE_VERSION = 1


@dataclass(frozen=True)
class MicroBatchKey:
    """Which samples one micro-batch holds."""

    step: int  # global batch index (= optimizer step it feeds)
    micro: int  # accumulation index within the step, 0 .. accum_steps-1
    positions: tuple[int, ...]  # stream positions
    sources: tuple[int, ...]  # source index per sample
    records: tuple[int, ...]  # record index within its source per sample


def accum_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Accumulation steps A = ceil(G / (W m)): the fewest that keep every micro-batch <= m rows."""
    if min(global_batch, micro_batch, world_size) < 1:
        raise ValueError("global_batch, micro_batch and world_size must be >= 1")
    return -(-global_batch // (micro_batch * world_size))


class ElasticSampler:
    """Micro-batch keys of one rank, from global batch `start_step` up to (not incl.) `stop_step`."""

    def __init__(
        self,
        mixture: Mixture,
        global_batch: int,
        micro_batch: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        stop_step: int | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.mixture = mixture
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.rank, self.world_size = rank, world_size
        self.accum_steps = accum_steps(global_batch, micro_batch, world_size)
        self.start_step = start_step
        self.stop_step = stop_step

    def key(self, step: int, micro: int) -> MicroBatchKey:
        slots = self.world_size * self.accum_steps
        slot = micro * self.world_size + self.rank
        # Slot sizes differ by at most one (all exactly m when W x m divides G), so any world
        # size can take over a run: the loss is normalised by the global target count anyway.
        base = step * self.global_batch
        lo, hi = base + slot * self.global_batch // slots, base + (slot + 1) * self.global_batch // slots
        positions = np.arange(lo, hi, dtype=np.int64)
        sources, records = self.mixture.locate(positions)
        return MicroBatchKey(
            step, micro, tuple(positions.tolist()), tuple(sources.tolist()), tuple(records.tolist())
        )

    def __iter__(self) -> Iterator[MicroBatchKey]:
        step = self.start_step
        while self.stop_step is None or step < self.stop_step:
            for micro in range(self.accum_steps):
                yield self.key(step, micro)
            step += 1

    def __len__(self) -> int:
        if self.stop_step is None:
            raise TypeError("an open-ended sampler has no length")
        return max(0, self.stop_step - self.start_step) * self.accum_steps

    # -- checkpoint state -----------------------------------------------------------------
    def state_dict(self, next_step: int) -> dict[str, Any]:
        """What a checkpoint stores: the next global batch plus what must not change on resume."""
        return {
            "version": STATE_VERSION,
            "next_step": int(next_step),
            "global_batch": self.global_batch,
            "fingerprint": self.mixture.fingerprint(),
        }


def check_state(state: dict[str, Any], mixture: Mixture, global_batch: int, strict: bool = True) -> int:
    """Validate a saved sampler state against this run; returns the step to resume at."""
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"unknown data sampler state version {state.get('version')!r} (expected {STATE_VERSION})"
        )
    if state["global_batch"] != global_batch:
        raise ValueError(
            f"train.global_batch changed from {state['global_batch']} to {global_batch} "
            "since the checkpoint; the sampler resumes by global batch index, so keep the global batch "
            "(change micro_batch instead)"
        )
    if strict and state["fingerprint"] != mixture.fingerprint():
        raise ValueError(
            "the data mixture changed since the checkpoint (sources, record counts, weights, "
            "data.fraction or data.seed differ), so resuming would repeat or skip samples; restore "
            "the data config, or resume with strict=False to accept a different stream"
        )
    return int(state["next_step"])
