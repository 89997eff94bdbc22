"""A thread pool whose threads never hold the process open.

`concurrent.futures.ThreadPoolExecutor` joins its threads when the interpreter exits, so a
transfer abandoned after its deadline (a stalled request that botocore keeps retrying) kept a
process alive for minutes after its work was done, or for good once the pool refused the
transfer's follow-up tasks at shutdown. A training worker that failed a save must be able to
exit. The transfers this pool runs are safe to drop: nothing is visible on the store until
its manifest is committed, and S3 lifecycle rules abort orphaned multipart uploads.
Used for our file transfers and, through `executor_cls`, inside s3transfer.
"""

from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")
# A queued call: (its future, fn, args, kwargs). None in the queue tells one worker to stop.
_Work = tuple[cf.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonThreadPool(cf.Executor):
    """`submit`/`shutdown` like ThreadPoolExecutor, on daemon threads started as work arrives."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "daemon-pool"):
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers, self._prefix = max_workers, thread_name_prefix
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> cf.Future[_T]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: cf.Future[_T] = cf.Future()
            self._queue.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self._prefix}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    # None: an earlier shutdown's stop marker; one per thread is put back below.
                    if item is not None:
                        item[0].cancel()
            for _ in self._threads:
                self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as err:  # handed to whoever waits on the future
                    future.set_exception(err)
                del future, fn, args, kwargs, item  # drop references before idling
            self._idle.release()
