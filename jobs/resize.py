"""Grow at a committed step: rank 0 watches for room for more workers; the group then commits and stops.

Ray Train V2 (2.60) grows an elastic group (`ScalingConfig(num_workers=(min, max))`) from its
controller: every `elastic_resize_monitor_interval_s` its `ElasticScalingPolicy` counts the
workers that fit and, when more fit, shuts the running group down and starts a bigger one. Its
only hook before that restart, the `before_controller_execute_resize_decision` controller callback,
is synchronous in the controller's event loop and cannot reach the training loop, so a resize
there redoes every step since the last periodic checkpoint (up to `train.checkpoint_interval`).
So the job does it itself (docs/training.md, "Resizes and preemptions"):

1. the driver turns Ray's own up-scale off (`elastic_resize_monitor_interval_s` far beyond any run);
2. every `parallel.resize_check_seconds`, rank 0 of a group smaller than `max_workers` asks Ray
   what is free (`ray.available_resources()`: what our workers hold is not in it) and counts the
   workers that would fit (`workers_that_fit`);
3. room must last `parallel.resize_settle_seconds` (looks that all see it) before the job stops:
   Ray Train's autoscaling coordinator, which sizes the next segment, re-reads the cluster's nodes
   only every 20 s (`DefaultAutoscalingCoordinator.TICK_INTERVAL_S` in Ray 2.60); a segment started
   sooner after a node joined counts without it and restarts at the old size. Training goes on
   meanwhile, so the wait costs no step; it also rides out a node that joins and leaves at once;
4. at the end of that step all ranks vote (`preemption.StopSignal.vote`, the all-reduce the stop
   request already makes), commit the step and raise `preemption.Resized`; the Ray adapter
   returns it as an outcome, not an error, and the driver starts the next segment, whose
   `ElasticScalingPolicy` starts as many workers as fit. A resize loses no step.

Torch-free and Ray-free: the probe (`Worker.free_resources`) is handed in by the Ray adapter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping


def workers_that_fit(available: Mapping[str, float], per_worker: Mapping[str, float]) -> int:
    """How many more workers `available` resources hold, each needing `per_worker`. Pure.

    `per_worker` is what the driver asks Ray Train for (`{"CPU": c, "GPU": g}`); a resource a
    worker does not need (0) does not limit.
    """
    needed = {name: amount for name, amount in per_worker.items() if amount > 0}
    if not needed:
        return 0  # nothing to count by: never grow on a guess
    return int(min(available.get(name, 0.0) // amount for name, amount in needed.items()))


class CapacityWatch:
    """Rank 0's periodic look for room to grow; `room()` is False everywhere else.

    `probe` returns the resources free in the cluster now (`ray.available_resources()`); None
    (not rank 0, no Ray, `resize_check_seconds: 0`, a fixed-size group) never looks. Room counts
    once looks have seen it for `settle_s` without a look that saw none in between.
    """

    def __init__(
        self,
        probe: Callable[[], Mapping[str, float]] | None,
        per_worker: Mapping[str, float],
        world_size: int,
        max_workers: int,
        every_s: float,
        settle_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.probe = probe if every_s > 0 and world_size < max_workers else None
        self.per_worker, self.world_size, self.max_workers = dict(per_worker), world_size, max_workers
        self.every_s, self.settle_s, self.clock = every_s, settle_s, clock
        self.next_look = clock() + every_s
        self.seen = 0  # workers that fit, at the last look
        self.room_since: float | None = None  # the first of the looks in a row that saw room

    def room(self) -> bool:
        """True when, at a look that is due, at least one more worker fits and has for `settle_s`."""
        now = self.clock()
        if self.probe is None or now < self.next_look:
            return False
        self.next_look = now + self.every_s
        try:
            free = self.probe()
        except Exception:  # noqa: BLE001 - a failed look (GCS busy) is no reason to stop training
            return False
        self.seen = min(workers_that_fit(free, self.per_worker), self.max_workers - self.world_size)
        if self.seen <= 0:
            self.room_since = None
            return False
        if self.room_since is None:
            self.room_since = now
            if self.settle_s > 0:
                print(
                    f"[sphinxx] room for {self.seen} more worker(s); growing once it has lasted "
                    f"{self.settle_s:g} s (parallel.resize_settle_seconds)",
                    flush=True,
                )
        return now - self.room_since >= self.settle_s
