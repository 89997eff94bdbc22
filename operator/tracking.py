"""MLflow child runs off the RayJob path: found or created by a small pool while the passes go on.

A TrainingRun's pass never waits on MLflow (docs/operator.md, "MLflow runs off the RayJob path").
It asks `ChildRuns.lookup` for the point's child run: the id when a worker has found or created
it, None while one is at it (the pass creates the RayJob anyway, and the job waits for the id in
its stored config), or `TrackingUnavailable` when the last try failed (the pass reports it as a
condition; the next lookup tries again). When a try ends, `on_done` runs the run's pass again,
so the id reaches the status and the stored config at once, not at the next timer tick.

Exactly one child run per point: a point is looked up by one worker at a time (one future per
TrainingRun uid), and the points of a sweep are looked for with one search of the parent run's
children per process (`mlflow_runs.child_runs`), which then records every run this process
creates; a restarted operator searches again, so it finds what its predecessor made.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from sphinxx.sweep import mlflow_runs

WORKERS = 4  # concurrent MLflow requests: a tracking server with one worker gains little beyond this
MAX_SWEEPS = 32  # the parents whose children stay indexed (least recently used dropped first)
ParentKey = tuple[str, str, str]  # (tracking uri, experiment, parent run id)


class ChildRuns:
    """A bounded pool that finds or creates child runs, one future per TrainingRun (by uid)."""

    def __init__(self, workers: int = WORKERS):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mlflow-runs")
        self._lock = threading.Lock()
        self._jobs: dict[str, Future[str]] = {}
        self._children: OrderedDict[ParentKey, dict[str, str]] = OrderedDict()
        self._loading: dict[ParentKey, threading.Lock] = {}

    def lookup(
        self,
        uri: str,
        experiment: str,
        point: mlflow_runs.PointRef,
        parent: str | None,
        on_done: Callable[[], None],
    ) -> str | None:
        """The point's child run id; None while a worker looks (`on_done` runs when it is done).

        Raises `TrackingUnavailable` once for a failed try; the lookup after that tries again.
        """
        with self._lock:
            job = self._jobs.get(point.uid)
            if job is None:
                job = self._pool.submit(self._ensure, uri, experiment, point, parent)
                self._jobs[point.uid] = job
                # on a worker, never inline: the caller holds its run's lock while it asks
                job.add_done_callback(lambda _: self._pool.submit(on_done))
                return None
            if not job.done():
                return None
            del self._jobs[point.uid]  # the caller records the id in status; a failure is tried anew
        return job.result()  # raises the try's TrackingUnavailable

    def _ensure(self, uri: str, experiment: str, point: mlflow_runs.PointRef, parent: str | None) -> str:
        if not parent:  # a TrainingRun on its own: searched by its uid tag
            return mlflow_runs.ensure_child_run(uri, experiment, point, None)
        children = self._index(uri, experiment, parent)
        found = children.get(point.uid)
        if found is None:
            found = mlflow_runs.create_child_run(uri, experiment, point, parent)
            children[point.uid] = found
        return found

    def _index(self, uri: str, experiment: str, parent: str) -> dict[str, str]:
        """The parent's children by uid: one search per process, made by the first worker that asks."""
        key = (uri, experiment, parent)
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._children:
                    self._children.move_to_end(key)
                    return self._children[key]
            children = mlflow_runs.child_runs(uri, experiment, parent)
            with self._lock:
                self._children[key] = children
                while len(self._children) > MAX_SWEEPS:
                    dropped, _ = self._children.popitem(last=False)
                    self._loading.pop(dropped, None)
            return children


_child_runs: ChildRuns | None = None
_guard = threading.Lock()


def child_runs() -> ChildRuns:
    """The operator process's pool (made at first use)."""
    global _child_runs
    with _guard:
        if _child_runs is None:
            _child_runs = ChildRuns()
        return _child_runs
