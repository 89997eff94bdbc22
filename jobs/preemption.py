"""Stop on request: a worker asked to stop (SIGTERM, a node drain, a resize) checkpoints its step and exits.

Preemption, node drains and elastic resizes end worker pods with SIGTERM and a grace period
(`train.termination_grace_seconds`, which the operator renders as the worker pods'
`terminationGracePeriodSeconds`). Without this, everything since the last periodic checkpoint
(up to `train.checkpoint_interval` steps) is lost. With it:

1. a worker learns it must stop, from either of two sources:
   - SIGTERM to its own process, when the loop runs in the process's main thread (plain
     processes: the tests, a job run by hand). Python only lets the main thread install a signal
     handler; a Ray Train worker runs the loop in another thread, and Ray's own handler ends the
     process on SIGTERM;
   - a *stop file* (`SPHINXX_STOP_FILE`), checked once per step. The operator renders a `preStop`
     hook on every worker container that writes it (`python -m sphinxx.jobs.preemption
     --stop-file ... --wait ...`) and waits, while the pod's grace period runs, until the workers
     say they are done (or none is alive: a pod ended after its job is not held up). This is how Ray Train
     workers in a pod learn of a SIGTERM: Kubernetes sends it to the container's first process only, never to
     the Ray worker processes;
2. it finishes the step it is in; at the end of every step all ranks agree with one all-reduce of
   a flag (`StopSignal.agreed`), so one rank's SIGTERM stops them all at the same step;
3. every rank saves a checkpoint of that step through the commit protocol (nothing is visible
   until the manifest is written, docs/storage.md, "Commit protocol"), then raises `Preempted`:
   Ray Train restarts the worker group (a resize) or the operator starts the next attempt, and
   either resumes at that step;
4. if the commit cannot finish within the grace period, a watchdog ends the process at the
   deadline (`os._exit`, as the kubelet's SIGKILL would): the step stays uncommitted, so the
   previous checkpoint stays the latest and the partial folder is removed by the next attempt.

Torch-free: the preStop hook imports this module alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("sphinxx.preemption")

STOP_FILE_ENV = "SPHINXX_STOP_FILE"  # set on worker pods by the operator (render.py)
DEFAULT_STOP_FILE = "/tmp/sphinxx-stop"
DONE_SUFFIX = ".done"  # written next to the stop file when this worker has finished stopping
ACTIVE_SUFFIX = ".active"  # written next to it by every training process at start (with its pid)
EXIT_DEADLINE = 75  # the watchdog's exit code: the grace period ran out before the commit finished
MARGIN_S = 5.0  # ends the process this long before the grace period does (Ray and the pod still exit)


PREEMPTED, RESIZE = "preempted", "resize"  # the kinds of a planned stop (`StopRequested.kind`)
VOTE_STOP, VOTE_GROW = 2.0, 1.0  # a rank's vote at the end of a step (`StopSignal.vote`; MAX wins)


class StopRequested(RuntimeError):
    """A planned stop at a committed step: raised on every rank once the checkpoint of `step` is
    committed. Not a failure: the Ray adapter returns `outcome()` instead of raising it, and the
    driver counts it apart from `parallel.max_failures` (`jobs/segments.py`)."""

    kind = "stop"

    def __init__(self, step: int, why: str):
        super().__init__(f"stopped at step {step} ({self.kind}: {why}); checkpoint of step {step} committed")
        self.step = step
        self.why = why

    def __reduce__(self) -> tuple[type, tuple[int, str]]:
        # Ray unpickles what crosses it; the default (the message as the only argument) would not
        # fit this constructor, and Ray would log a TypeError instead of the stop reason.
        return type(self), (self.step, self.why)

    def outcome(self) -> dict[str, object]:
        """What a worker returns to Ray Train for this stop (the driver reads rank 0's)."""
        return {STOP_KEY: self.kind, "step": self.step, "why": self.why}


STOP_KEY = "sphinxx_stop"  # the key of a stop outcome in a worker's return value


class Preempted(StopRequested):
    """Asked to stop (SIGTERM, the preStop stop file, a peer): the next segment resumes at `step`."""

    kind = PREEMPTED


class Resized(StopRequested):
    """Stopped to grow: room for more workers appeared (`jobs/resize.py`); the next segment starts
    with as many workers as fit and resumes at `step`."""

    kind = RESIZE


class StopSignal:
    """Whether this worker was asked to stop, and by when it must be gone.

    `request()` (the SIGTERM handler, a stop file) starts the grace period; `agreed()` is the
    per-step vote of all ranks; a watchdog thread ends the process at the deadline.
    """

    def __init__(
        self,
        grace_s: float,
        stop_file: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        exit_fn: Callable[[int], None] = os._exit,
    ):
        self.grace_s = grace_s
        self.stop_file = stop_file
        self.clock = clock
        self.exit_fn = exit_fn
        self.why: str | None = None
        self.deadline: float | None = None
        self._lock = threading.Lock()
        self._wakeup: tuple[socket.socket, socket.socket] | None = None

    @classmethod
    def from_env(cls, grace_s: float) -> StopSignal:
        """The stop file from SPHINXX_STOP_FILE (unset: none); the SIGTERM handler when possible."""
        stop = cls(grace_s, os.environ.get(STOP_FILE_ENV) or None)
        stop.install()
        stop.announce()
        return stop

    def announce(self) -> None:
        """Tell the preStop hook a training process lives here (so a pod ended after the job only
        waits for workers that exist)."""
        if self.stop_file:
            try:
                with open(f"{self.stop_file}{ACTIVE_SUFFIX}.{os.getpid()}", "w") as fh:
                    fh.write(f"{time.time()}\n")
            except OSError as err:
                log.warning("could not write the active marker next to %s: %s", self.stop_file, err)

    def install(self) -> bool:
        """Handle SIGTERM in this process; False where Python cannot (not the main thread).

        Python runs a signal handler only when the main thread is back in Python code; a rank
        blocked in a collective (waiting for a peer stuck on S3) would not start its grace period
        at all. CPython's C-level handler also writes the signal number to the wakeup fd at once,
        so a thread reading it starts the grace period (and the watchdog) on time. An existing
        wakeup fd (an asyncio loop in the main thread) is left alone: the handler alone then.
        """
        if threading.current_thread() is not threading.main_thread():
            return False
        signal.signal(signal.SIGTERM, lambda signum, frame: self.request("SIGTERM"))
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        if previous != -1:
            signal.set_wakeup_fd(previous)  # someone else's: put it back
            reader.close()
            writer.close()
            return True
        self._wakeup = (reader, writer)  # kept open for the process's life
        threading.Thread(target=self._on_wakeup, args=(reader,), name="sphinxx-sigterm", daemon=True).start()
        return True

    def _on_wakeup(self, reader: socket.socket) -> None:
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                self.request("SIGTERM")

    def request(self, why: str) -> None:
        """Start stopping: the grace period runs from now (the first request counts)."""
        with self._lock:
            if self.deadline is not None:
                return
            self.why = why
            self.deadline = self.clock() + max(1.0, self.grace_s - MARGIN_S)
        threading.Thread(target=self._watchdog, name="sphinxx-stop-watchdog", daemon=True).start()

    @property
    def requested(self) -> bool:
        """True once asked to stop (a stop file is checked here, once per call)."""
        if self.deadline is None and self.stop_file and os.path.exists(self.stop_file):
            self.request(f"stop file {self.stop_file}")
        return self.deadline is not None

    def remaining(self) -> float:
        return float("inf") if self.deadline is None else max(0.0, self.deadline - self.clock())

    def agreed(self, all_reduce_max: Callable[[float], float]) -> bool:
        """True on every rank once any rank was asked to stop (one all-reduce of a flag).

        A rank that learns of the stop from its peers starts its own grace period: the whole
        group stops and saves together.
        """
        return self.vote(all_reduce_max) == PREEMPTED

    def vote(self, all_reduce_max: Callable[[float], float], grow: bool = False) -> str | None:
        """The stop all ranks agree on at the end of a step, with one all-reduce: PREEMPTED once
        any rank was asked to stop, else RESIZE when any rank (rank 0, `resize.CapacityWatch`) saw
        room to grow, else None. A stop request wins over a resize."""
        mine = VOTE_STOP if self.requested else VOTE_GROW if grow else 0.0
        agreed = all_reduce_max(mine)
        if agreed >= VOTE_STOP:
            if self.deadline is None:
                self.request("a peer was asked to stop")
            return PREEMPTED
        return RESIZE if agreed >= VOTE_GROW else None

    def done(self) -> None:
        """Tell the preStop hook this worker has finished stopping (checkpoint committed or not)."""
        if self.stop_file:
            try:
                with open(f"{self.stop_file}{DONE_SUFFIX}.{os.getpid()}", "w") as fh:
                    fh.write(f"{self.why}\n")
            except OSError as err:  # the hook then waits out its time; nothing else depends on it
                log.warning("could not write the done marker next to %s: %s", self.stop_file, err)

    def _watchdog(self) -> None:
        while True:
            left = self.remaining()
            if left <= 0:
                break
            time.sleep(min(left, 0.5))
        log.error(
            "stop requested (%s) %.0f s ago and the checkpoint has not committed: exiting now; the previous "
            "checkpoint stays the latest",
            self.why,
            self.grace_s,
        )
        sys.stderr.flush()
        self.exit_fn(EXIT_DEADLINE)


# ------------------------------------------------------------------------------ preStop hook


def prestop(stop_file: str, wait_s: float, poll_s: float = 0.5) -> int:
    """Write the stop file, then wait until a worker reports done, no training process is alive
    any more, or `wait_s` passed; 0 either way.

    Returning lets the kubelet send SIGTERM to the container (Ray then exits); the pod's grace
    period counts the hook's time, so `wait_s` is the grace period minus a margin. A pod ended
    after its job finished has no live training process and is not held up.
    """
    directory = os.path.dirname(stop_file) or "."
    os.makedirs(directory, exist_ok=True)
    with open(stop_file, "w") as fh:
        fh.write(f"{time.time()}\n")
    deadline = time.monotonic() + wait_s
    base = os.path.basename(stop_file)
    while time.monotonic() < deadline:
        names = os.listdir(directory)
        if any(name.startswith(base + DONE_SUFFIX) for name in names):
            return 0
        active = [name.rsplit(".", 1)[-1] for name in names if name.startswith(base + ACTIVE_SUFFIX + ".")]
        if not any(_alive(pid) for pid in active):
            return 0
        time.sleep(poll_s)
    return 0


def _alive(pid: str) -> bool:
    """Whether process `pid` (a training process of this container) still runs."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sphinxx.jobs.preemption",
        description="preStop hook of a worker pod: ask the training workers to checkpoint and stop",
    )
    parser.add_argument("--stop-file", default=os.environ.get(STOP_FILE_ENV) or DEFAULT_STOP_FILE)
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the workers")
    args = parser.parse_args(argv)
    return prestop(args.stop_file, args.wait)


if __name__ == "__main__":
    sys.exit(main())
