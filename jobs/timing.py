"""Optional timing of the training loop's phases, for benchmarks (bench/gpu_train.py).

`loop.train(cfg, worker, timer=...)` takes a timer; the job passes none and gets `NULL_TIMER`,
whose calls do nothing (one no-op call per phase and step, no synchronisation). The loop calls:

- `start(model, flops)` once, before the first step: the model as built and wrapped, and the
  step's `metrics.FlopModel`, so a benchmark counts FLOPs and the peak exactly as the job does;
- `phase(name)` around each phase: `data` (waiting for the next global batch from the loader and
  copying each micro-batch to the device), `forward` (the engine's forward and the loss),
  `backward`, `optimizer` (the engine's step); `vision` (the frozen towers) is timed inside
  `forward` by forward hooks on `model.vision` that `start` registers;
- `step_done(step, stats, metrics)` after each optimizer step, with the step's `StepStats` and the
  metrics the job logs.

`PhaseTimer` measures with CUDA events on a CUDA device: events are recorded on the current
stream as the loop goes and read once per step, after one synchronisation (the loop already
waits for the GPU at each step's end when it reads the loss), so timing does not serialise the
host and the GPU within a step. On CPU it reads `time.perf_counter`. Each step's seconds per phase
go to a callback with the step's wall time (between two `step_done` calls, the first from the
first phase), and what no phase covers (the loop's bookkeeping: the loss all-reduce, metrics,
checkpoint saves) is the wall time minus `data + forward + backward + optimizer`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

PHASES = ("data", "forward", "vision", "backward", "optimizer")
_NO_PHASE = contextlib.nullcontext()


class NullTimer:
    """The job's timer: measures nothing."""

    def start(self, model: torch.nn.Module, flops: Any) -> None: ...

    def phase(self, name: str) -> contextlib.AbstractContextManager:
        return _NO_PHASE

    def step_done(self, step: int, stats: Any, metrics: dict[str, Any]) -> None: ...


NULL_TIMER = NullTimer()

# on_step(step, wall seconds, seconds per phase, stats, metrics)
StepCallback = Callable[[int, float, dict[str, float], Any, dict[str, Any]], None]
# on_start(model, flops)
StartCallback = Callable[[torch.nn.Module, Any], None]


class PhaseTimer:
    """Seconds per phase of each step: CUDA events on a CUDA device, perf_counter elsewhere."""

    def __init__(self, device: str, on_step: StepCallback, on_start: StartCallback | None = None):
        self.cuda = device.startswith("cuda")
        self.on_step, self.on_start = on_step, on_start
        self.model: torch.nn.Module | None = None
        self.flops: Any = None
        self._marks: list[tuple[str, Any, Any]] = []  # (phase, start, end)
        self._open: dict[str, Any] = {}
        self._step_start: float | None = None

    def start(self, model: torch.nn.Module, flops: Any) -> None:
        self.model, self.flops = model, flops
        vision = getattr(model, "vision", None)
        if vision is not None:
            vision.register_forward_pre_hook(lambda *_: self._begin("vision"))
            vision.register_forward_hook(lambda *_: self._end("vision"))
        if self.on_start is not None:
            self.on_start(model, flops)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._begin(name)
        try:
            yield
        finally:
            self._end(name)

    def step_done(self, step: int, stats: Any, metrics: dict[str, Any]) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        seconds = dict.fromkeys(PHASES, 0.0)
        for name, start, end in self._marks:
            seconds[name] += start.elapsed_time(end) / 1e3 if self.cuda else end - start
        wall = now - (self._step_start if self._step_start is not None else now)
        self._marks, self._step_start = [], None
        self.on_step(step, wall, seconds, stats, metrics)

    def _now(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _begin(self, name: str) -> None:
        if self._step_start is None:
            self._step_start = time.perf_counter()
        self._open[name] = self._now()

    def _end(self, name: str) -> None:
        start = self._open.pop(name, None)
        if start is not None:
            self._marks.append((name, start, self._now()))
