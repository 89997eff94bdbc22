"""kopf handlers: thin triggers that name the object to reconcile (reconcile.py does the work).

Run through `sphinxx operator run` (or `kopf run -m sphinxx.operator.handlers`). Intervals come
from the environment at import time (settings.py), because kopf's timer decorators need them.

Every change, every timer tick, every RayJob event and every operator restart (`on.resume`) runs
the same level-based reconcile, so a missed event only delays convergence.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from . import names, reconcile
from .kube import default as kube
from .settings import Settings

SETTINGS = Settings.from_env()
RUNS = (names.GROUP, names.VERSION, "trainingruns")
SWEEPS = (names.GROUP, names.VERSION, "scalingsweeps")


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


def _run(namespace: str | None, name: str) -> None:
    assert namespace, "TrainingRuns are namespaced"
    try:
        delay = reconcile.reconcile_run(kube(), namespace, name, SETTINGS)
    except reconcile.RetryLater as err:
        raise kopf.TemporaryError(str(err), delay=err.delay) from err
    if delay:
        raise kopf.TemporaryError(f"waiting {delay:.0f}s (backoff)", delay=delay)


@kopf.on.resume(*RUNS)
@kopf.on.create(*RUNS)
@kopf.on.update(*RUNS)
def run_changed(namespace: str | None, name: str, **_: Any) -> None:
    _run(namespace, name)


@kopf.timer(*RUNS, interval=SETTINGS.run_interval)
def run_tick(namespace: str | None, name: str, **_: Any) -> None:
    assert namespace, "TrainingRuns are namespaced"
    try:
        reconcile.reconcile_run(kube(), namespace, name, SETTINGS)
    except reconcile.RetryLater:
        pass  # the condition is set; the next tick tries again


@kopf.on.event("ray.io", "v1", "rayjobs", labels={names.LABEL_RUN: kopf.PRESENT})
def rayjob_event(namespace: str | None, labels: Mapping[str, str], type: str, **_: Any) -> None:
    assert namespace, "RayJobs are namespaced"
    if type in ("ADDED", "MODIFIED", "DELETED"):
        try:
            reconcile.reconcile_run(kube(), namespace, labels[names.LABEL_RUN], SETTINGS)
        except reconcile.RetryLater:
            pass


@kopf.on.delete(*RUNS)
def run_deleted(body: kopf.Body, **_: Any) -> None:
    reconcile.finalize_run(kube(), dict(body), SETTINGS)


def _sweep(namespace: str | None, name: str) -> None:
    assert namespace, "ScalingSweeps are namespaced"
    try:
        reconcile.reconcile_sweep(kube(), namespace, name, SETTINGS)
    except reconcile.RetryLater as err:
        raise kopf.TemporaryError(str(err), delay=err.delay) from err


@kopf.on.resume(*SWEEPS)
@kopf.on.create(*SWEEPS)
@kopf.on.update(*SWEEPS)
def sweep_changed(namespace: str | None, name: str, **_: Any) -> None:
    _sweep(namespace, name)


@kopf.timer(*SWEEPS, interval=SETTINGS.sweep_interval)
def sweep_tick(namespace: str | None, name: str, **_: Any) -> None:
    assert namespace, "ScalingSweeps are namespaced"
    try:
        reconcile.reconcile_sweep(kube(), namespace, name, SETTINGS)
    except reconcile.RetryLater:
        pass


@kopf.on.delete(*SWEEPS)
def sweep_deleted(body: kopf.Body, **_: Any) -> None:
    reconcile.finalize_sweep(kube(), dict(body), SETTINGS)


@kopf.on.probe(id="reconciles")
def probe(**_: Any) -> str:
    return "ok"
