"""The one checkpoint commit a rank may have in flight, run in a background thread.

An asynchronous save hands its work (serialise, upload, write the writer record, and on rank 0
commit the manifest and apply retention) to `InFlight.start` and returns. At most one is in
flight: the next save, the final one, a stop's and the end of the loop first `wait()` for it, and
say how long they waited. A failure is kept, never dropped: `check()` (called once per step)
and `wait()` raise `CheckpointSaveError` naming the step and the cause, so a checkpoint that did
not commit fails the run at the next step instead of leaving a silent gap. The previous
checkpoint stays the latest: nothing is visible before the manifest (docs/storage.md, "Commit
protocol").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("sphinxx.checkpoint")


class CheckpointSaveError(RuntimeError):
    """A checkpoint that did not commit (in the background, or on a peer rank)."""

    def __init__(self, step: int, cause: str):
        super().__init__(
            f"the checkpoint of step {step} did not commit: {cause}; the previous checkpoint stays the latest"
        )
        self.step, self.cause = step, cause

    def __reduce__(self) -> tuple[type, tuple[int, str]]:
        return type(self), (self.step, self.cause)  # Ray unpickles what crosses it


@dataclass
class Outcome:
    """What the last background save came to: its result, or why it failed."""

    step: int
    result: Any = None
    error: BaseException | None = None
    seconds: float = 0.0  # how long its background work took

    def describe_error(self) -> str | None:
        return None if self.error is None else f"{type(self.error).__name__}: {self.error}"


class InFlight:
    """At most one background save of this rank (see the module docstring)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._outcome: Outcome | None = None

    @property
    def busy(self) -> bool:
        """Whether a save's background work is still running."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def step(self) -> int | None:
        """The step of the save in flight (or last finished, until `wait` collects it)."""
        return None if self._outcome is None else self._outcome.step

    def start(self, step: int, work: Callable[[], Any]) -> None:
        if self._thread is not None:
            raise RuntimeError(f"a checkpoint save (step {self.step}) is still in flight; wait() first")
        outcome = Outcome(step)

        def run() -> None:
            began = time.monotonic()
            try:
                outcome.result = work()
            except BaseException as err:  # noqa: BLE001 - kept and raised in the training thread
                outcome.error = err
                log.error("background commit of step %d failed: %s", step, outcome.describe_error())
            outcome.seconds = time.monotonic() - began

        self._outcome = outcome
        # A daemon: a process that dies (or is stopped) mid-upload leaves an uncommitted folder, as
        # a killed synchronous save would; the next attempt removes it.
        self._thread = threading.Thread(target=run, name=f"sphinxx-ckpt-{step}", daemon=True)
        self._thread.start()

    def wait(self) -> tuple[Outcome | None, float]:
        """Wait for the save in flight; (its outcome, or None if there was none; seconds waited).
        Does not raise: the caller decides (all ranks agree first, `Checkpointer.drain`)."""
        if self._thread is None:
            return None, 0.0
        began = time.monotonic()
        self._thread.join()
        waited = time.monotonic() - began
        outcome, self._thread, self._outcome = self._outcome, None, None
        return outcome, waited

    def check(self) -> None:
        """Raise `CheckpointSaveError` if the background save failed (no waiting: once per step)."""
        outcome = self._outcome
        if outcome is not None and not self.busy and outcome.error is not None:
            raise CheckpointSaveError(outcome.step, outcome.describe_error() or "") from outcome.error
