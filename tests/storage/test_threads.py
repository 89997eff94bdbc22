"""The daemon thread pool behind transfers: executor semantics, bounded threads, never joined at exit."""

from __future__ import annotations

import threading
import time

import pytest

from sphinxx.storage.threads import DaemonThreadPool


def test_results_errors_and_bounded_daemon_threads() -> None:
    pool = DaemonThreadPool(2, thread_name_prefix="t")
    running, peak, lock = [0], [0], threading.Lock()

    def work(x: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        if x == 3:
            raise ValueError("three")
        return x * x

    futures = [pool.submit(work, x) for x in range(6)]
    assert [f.result() for f in futures if f is not futures[3]] == [0, 1, 4, 16, 25]
    with pytest.raises(ValueError, match="three"):
        futures[3].result()
    assert peak[0] == 2
    names = [t for t in threading.enumerate() if t.name.startswith("t_")]
    assert len(names) == 2 and all(t.daemon for t in names)
    pool.shutdown(wait=True)
    assert not any(t.is_alive() for t in names)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(work, 1)


def test_idle_threads_are_reused_and_queued_work_can_be_cancelled() -> None:
    pool = DaemonThreadPool(4, thread_name_prefix="reuse")
    for _ in range(5):
        pool.submit(lambda: None).result()
        time.sleep(0.01)  # the worker is idle again before the next submit
    assert len([t for t in threading.enumerate() if t.name.startswith("reuse_")]) == 1
    pool.shutdown()

    gate = threading.Event()
    slow = DaemonThreadPool(1, thread_name_prefix="gate")
    first = slow.submit(gate.wait, 5)
    queued = slow.submit(lambda: "never")
    slow.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    gate.set()
    assert first.result(timeout=5) is True


def test_shutdown_may_be_called_again_while_a_worker_is_busy() -> None:
    # Like ThreadPoolExecutor. The second call used to find the first one's stop markers in the
    # queue and fail on them (TypeError) while cancelling the queued work.
    gate = threading.Event()
    pool = DaemonThreadPool(1, thread_name_prefix="twice")
    busy = pool.submit(gate.wait, 5)
    queued = pool.submit(lambda: "never")
    pool.shutdown(wait=False, cancel_futures=True)
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    gate.set()
    assert busy.result(timeout=5) is True
    pool.shutdown(wait=True)  # the worker stops: one stop marker per thread is still queued
    assert not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("twice_"))
