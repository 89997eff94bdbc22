"""kopf handlers: thin triggers that name the object to reconcile (reconcile.py does the work).

Run through `sphinxx operator run` (or `kopf run -m sphinxx.operator.handlers`). Intervals come
from the environment at import time (settings.py), because kopf's timer decorators need them.

Every change, every timer tick, every RayJob event and every operator restart (`on.resume`) runs
the same level-based reconcile, so a missed event only delays convergence. Reads come from kopf's
watch-fed indexes (cache.py), so at steady state a pass sends nothing to the API server.

A sweep is rolled up by one daemon per sweep: woken by any change of one of its points, it runs
at most one pass per batch window (at least 1 s, or twice the last pass's CPU time), so a burst
of a thousand point updates becomes a few roll-ups and a few status writes, not a thousand; with
no change it runs every `sweep_interval` seconds as a level check.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import kopf

from . import names, reconcile
from .cache import CachedKube, mirror
from .kube import default as default_kube
from .settings import Settings

log = logging.getLogger("sphinxx.operator")
SETTINGS = Settings.from_env()
RUNS = (names.GROUP, names.VERSION, "trainingruns")
SWEEPS = (names.GROUP, names.VERSION, "scalingsweeps")
RAYJOBS = ("ray.io", "v1", "rayjobs")
OURS = {names.LABEL_RUN: kopf.PRESENT}  # RayJobs the operator made
# kopf index name (a handler kwarg) -> the resource it mirrors
INDEXES = {"runs_index": "trainingruns", "sweeps_index": "scalingsweeps", "rayjobs_index": "rayjobs"}
MIN_BATCH_SECONDS = 1.0
# Roll-ups run on threads of their own, not behind the runs' handlers in kopf's executor queue.
_ROLLUPS = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="sweep-rollup")


def kube(kwargs: Mapping[str, Any]) -> CachedKube:
    """The API client for one handler call, reading the watched resources from kopf's indexes."""
    return CachedKube(default_kube(), {resource: kwargs[idx] for idx, resource in INDEXES.items()})


@kopf.index(*RUNS)
def runs_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Any]:
    return {(namespace or "", name): mirror("trainingruns", dict(body))}


@kopf.index(*SWEEPS)
def sweeps_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Any]:
    return {(namespace or "", name): mirror("scalingsweeps", dict(body))}


@kopf.index(*RAYJOBS, labels=OURS)
def rayjobs_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str, str], Any]:
    return {(namespace or "", name): mirror("rayjobs", dict(body))}


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Progress and diff-base in annotations: kopf then never writes into our status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = names.FINALIZER
    settings.posting.level = logging.WARNING  # our own events describe transitions; kopf's only errors
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 8
    # With --peering: how long a replica's record counts after its last keep-alive. A replica that
    # dies without saying goodbye (SIGKILL, node loss) is replaced by a paused peer this much later.
    settings.peering.lifetime = int(SETTINGS.peering_lifetime)
    # Timers run in threads and cannot be cancelled; poll their exit often, so a deletion's
    # finalizer is released within a second instead of kopf's default minute.
    settings.background.cancellation_polling = 0.5


def _run(namespace: str | None, name: str, kwargs: Mapping[str, Any]) -> None:
    assert namespace, "TrainingRuns are namespaced"
    try:
        delay = reconcile.reconcile_run(kube(kwargs), namespace, name, SETTINGS)
    except reconcile.RetryLater as err:
        raise kopf.TemporaryError(str(err), delay=err.delay) from err
    if delay:
        raise kopf.TemporaryError(f"waiting {delay:.0f}s (backoff)", delay=delay)


@kopf.on.resume(*RUNS)
@kopf.on.create(*RUNS)
@kopf.on.update(*RUNS)
def run_changed(namespace: str | None, name: str, **kwargs: Any) -> None:
    _run(namespace, name, kwargs)


# Sharp: a tick starts every run_interval seconds from the last start, however long the pass and
# its wait for a worker thread took, so a progress read due every third tick comes every 45 s
# (not 45 s plus three passes' latency: over a minute apart at 1,000 running points).
@kopf.timer(*RUNS, interval=SETTINGS.run_interval, sharp=True)
def run_tick(namespace: str | None, name: str, **kwargs: Any) -> None:
    assert namespace, "TrainingRuns are namespaced"
    try:
        reconcile.reconcile_run(kube(kwargs), namespace, name, SETTINGS)
    except reconcile.RetryLater:
        pass  # the condition is set; the next tick tries again


@kopf.on.event(*RAYJOBS, labels=OURS)
def rayjob_event(namespace: str | None, labels: Mapping[str, str], type: str, **kwargs: Any) -> None:
    assert namespace, "RayJobs are namespaced"
    if type in ("ADDED", "MODIFIED", "DELETED"):
        try:
            reconcile.reconcile_run(kube(kwargs), namespace, labels[names.LABEL_RUN], SETTINGS)
        except reconcile.RetryLater:
            pass


@kopf.on.delete(*RUNS)
def run_deleted(body: kopf.Body, **kwargs: Any) -> None:
    reconcile.finalize_run(kube(kwargs), dict(body), SETTINGS)


@kopf.on.event(*RUNS, labels={names.LABEL_SWEEP: kopf.PRESENT})
async def point_event(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    """A point changed: wake its sweep's roll-up (the daemon batches what arrives meanwhile)."""
    _wakeup((namespace or "", labels[names.LABEL_SWEEP])).set()


_wakeups: dict[tuple[str, str], threading.Event] = {}
_wakeups_guard = threading.Lock()


def _wakeup(key: tuple[str, str]) -> threading.Event:
    with _wakeups_guard:
        return _wakeups.setdefault(key, threading.Event())


def _sweep(namespace: str | None, name: str, kwargs: Mapping[str, Any]) -> None:
    assert namespace, "ScalingSweeps are namespaced"
    try:
        reconcile.reconcile_sweep(kube(kwargs), namespace, name, SETTINGS)
    except reconcile.RetryLater as err:
        raise kopf.TemporaryError(str(err), delay=err.delay) from err


@kopf.on.resume(*SWEEPS)
@kopf.on.create(*SWEEPS)
@kopf.on.update(*SWEEPS)
def sweep_changed(namespace: str | None, name: str, **kwargs: Any) -> None:
    _sweep(namespace, name, kwargs)


def _timed_sweep_pass(api: CachedKube, namespace: str, name: str) -> float:
    """One roll-up; returns the CPU seconds it took (not time spent waiting on a lock or the API)."""
    started = time.thread_time()
    reconcile.reconcile_sweep(api, namespace, name, SETTINGS)
    return time.thread_time() - started


@kopf.daemon(*SWEEPS, backoff=SETTINGS.retry_delay, cancellation_backoff=0.5, cancellation_timeout=1.0)
async def sweep_rollup(stopped: kopf.DaemonStopped, namespace: str | None, name: str, **kwargs: Any) -> None:
    """Roll the sweep up when a point changes (batched) or every `sweep_interval` seconds.

    Async, with the pass itself in a thread of its own: a sync daemon would hold one of kopf's
    handler workers for the sweep's lifetime.
    """
    assert namespace, "ScalingSweeps are namespaced"
    key = (namespace, name)
    wake = _wakeup(key)
    try:
        while not stopped:
            deadline = time.monotonic() + SETTINGS.sweep_interval
            while not stopped and not wake.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if stopped:
                return
            wake.clear()
            try:
                loop = asyncio.get_running_loop()
                cpu = await loop.run_in_executor(_ROLLUPS, _timed_sweep_pass, kube(kwargs), namespace, name)
            except reconcile.RetryLater as err:
                await stopped.wait(err.delay)
                continue
            log.debug("sweep %s/%s rolled up (%.2fs CPU)", namespace, name, cpu)
            gap = max(min(MIN_BATCH_SECONDS, SETTINGS.sweep_interval), 2 * cpu)
            await stopped.wait(gap)
    finally:
        with _wakeups_guard:
            _wakeups.pop(key, None)


@kopf.on.delete(*SWEEPS)
def sweep_deleted(body: kopf.Body, **kwargs: Any) -> None:
    reconcile.finalize_sweep(kube(kwargs), dict(body), SETTINGS)


@kopf.on.probe(id="reconciles")
def probe(**_: Any) -> str:
    return "ok"
