"""The MLflow side of a sweep: one parent run per sweep, one nested child run per point.

The same protocol on a cluster (the operator) and on a laptop (the local runner), so the same
sweep file gives the same experiment, run names and tags in both places:

- experiment: the run config's `tracking.experiment` (the sweep's `spec.base`, or a
  TrainingRun's own config);
- the parent run is named after the sweep and tagged `sphinxx.dev/kind: ScalingSweep`,
  `sphinxx.dev/sweep`, `sphinxx.dev/namespace` and `sphinxx.dev/sweep-uid`;
- a child run is named after its point (the TrainingRun) and tagged `sphinxx.dev/kind:
  TrainingRun`, `sphinxx.dev/trainingrun`, `sphinxx.dev/namespace`, `sphinxx.dev/model`,
  `sphinxx.dev/data-fraction`, `sphinxx.dev/trainingrun-uid`, its sweep's name, and
  `mlflow.parentRunId`;
- runs are found by their uid tag before one is created, so a retried handler, a restarted
  operator or a resumed local sweep never makes a second run. On a cluster the uids are the
  Kubernetes objects'; on a laptop they are minted once per sweep and kept in its state file;
- the owner sets the states: RUNNING while active, FINISHED or FAILED when the sweep or point
  ends, RUNNING again when it is resumed; the parent run gets the scaling-law fit (`log_fit`).

The training job only ever continues the child run it is given (`tracking.mlflow_run_id` in its
config). An unreachable server raises `TrackingUnavailable`, which the operator turns into a
condition and a retry and the local runner into an error message.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sphinxx.schema.fields import Naming, dump
from sphinxx.schema.status import PointRow, ScalingLawStatus, TrackingState

from .abilities import benchmark_names, benchmark_table, plot_name, table_rows
from .mlflow_rest import FoundRun, RestError, RestTracking, is_server
from .results import fit_metrics

TAG_KIND = "sphinxx.dev/kind"
TAG_NAMESPACE = "sphinxx.dev/namespace"
TAG_SWEEP = "sphinxx.dev/sweep"
TAG_SWEEP_UID = "sphinxx.dev/sweep-uid"
TAG_RUN = "sphinxx.dev/trainingrun"
TAG_RUN_UID = "sphinxx.dev/trainingrun-uid"
TAG_MODEL = "sphinxx.dev/model"
TAG_FRACTION = "sphinxx.dev/data-fraction"
TAG_SCALING_LAW = "sphinxx.dev/scaling-law"
TAG_ROLLBACK = "sphinxx.dev/rollback"  # the last rollback of a run: which metric values are superseded
TAG_NOTE = "mlflow.note.content"  # the run's description in the MLflow UI
TAG_PARENT = "mlflow.parentRunId"
# MLflow's own HTTP retries back off for minutes; the callers retry on their own schedule.
FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}

_clients: dict[str, Any] = {}
_stores: dict[str, Any] = {}  # uri -> RestTracking | _ClientStore
_experiments: dict[tuple[str, str], str] = {}  # (uri, name) -> id: an experiment's id never changes
_lock = threading.Lock()
SEARCH_PAGE = 1000  # runs per search page (child_runs)


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer (or answered with a server error)."""


@dataclass(frozen=True)
class SweepRef:
    """Which sweep a parent run belongs to."""

    namespace: str
    name: str
    uid: str

    def tags(self) -> dict[str, str]:
        return {
            TAG_KIND: "ScalingSweep",
            TAG_SWEEP: self.name,
            TAG_NAMESPACE: self.namespace,
            TAG_SWEEP_UID: self.uid,
        }


@dataclass(frozen=True)
class PointRef:
    """Which TrainingRun (a sweep's point, or a run on its own) a child run belongs to."""

    namespace: str
    name: str
    uid: str
    model: str
    fraction: float
    sweep: str | None = None

    def tags(self, parent_run_id: str | None) -> dict[str, str]:
        tags = {
            TAG_KIND: "TrainingRun",
            TAG_RUN: self.name,
            TAG_NAMESPACE: self.namespace,
            TAG_MODEL: self.model,
            TAG_FRACTION: str(self.fraction),
            TAG_RUN_UID: self.uid,
        }
        if self.sweep:
            tags[TAG_SWEEP] = self.sweep
        if parent_run_id:
            tags[TAG_PARENT] = parent_run_id
        return tags


def client(uri: str) -> Any:
    for key, value in FAST_FAIL_ENV.items():
        os.environ.setdefault(key, value)
    # MLflow (3-4 s) loads at the first call: `sphinxx --help` and the operator's startup import this module.
    from mlflow.tracking import MlflowClient

    with _lock:
        if uri not in _clients:
            _clients[uri] = MlflowClient(tracking_uri=uri)
        return _clients[uri]


class _ClientStore:
    """`mlflow_rest.RestTracking`'s calls through MlflowClient: for stores that are not a server."""

    def __init__(self, uri: str):
        self.client = client(uri)

    def experiment_id(self, name: str) -> str | None:
        found = self.client.get_experiment_by_name(name)
        return None if found is None else str(found.experiment_id)

    def create_experiment(self, name: str, artifact_location: str | None) -> str:
        return str(self.client.create_experiment(name, artifact_location=artifact_location))

    def search_runs(
        self, experiment_id: str, query: str, max_results: int, page_token: str | None = None
    ) -> tuple[list[FoundRun], str | None]:
        page = self.client.search_runs(
            [experiment_id], filter_string=query, max_results=max_results, page_token=page_token
        )
        return [FoundRun(str(r.info.run_id), dict(r.data.tags)) for r in page], page.token or None

    def create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> str:
        return str(self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id)

    def set_status(self, run_id: str, status: str, ended: bool) -> None:
        if ended:
            self.client.set_terminated(run_id, status=status)
        else:
            self.client.update_run(run_id, status=status)

    def delete_run(self, run_id: str) -> None:
        self.client.delete_run(run_id)


def _store(uri: str) -> RestTracking | _ClientStore:
    """A tracking server by REST (no mlflow import: mlflow_rest.py); any other store by MlflowClient."""
    for key, value in FAST_FAIL_ENV.items():
        os.environ.setdefault(key, value)
    with _lock:
        found = _stores.get(uri)
    if found is None:
        found = RestTracking(uri) if is_server(uri) else _ClientStore(uri)
        with _lock:
            found = _stores.setdefault(uri, found)
    return found


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except RestError as err:
        raise TrackingUnavailable(str(err).splitlines()[0] if str(err) else type(err).__name__) from err
    except OSError as err:  # connection refused, DNS, timeouts (requests' errors are OSErrors)
        raise TrackingUnavailable(f"{type(err).__name__}: {err}") from err
    except Exception as err:
        if "mlflow" not in sys.modules:  # then it is no MlflowException: only MlflowClient raises those
            raise
        from mlflow.exceptions import MlflowException  # loaded already (see above)

        if isinstance(err, MlflowException):
            raise TrackingUnavailable(str(err).splitlines()[0]) from err
        raise


def artifact_location(uri: str) -> str | None:
    """Where a local SQLite store keeps artifacts: `mlartifacts/` beside its database.

    MLflow's own default for a database store is `./mlruns` in the *current* directory, which
    scatters a sweep's plots and configs wherever a command happened to run. A tracking server
    decides for itself (None).
    """
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    return (database.parent / "mlartifacts").as_uri()


def experiment_id(uri: str, name: str) -> str:
    """The experiment's id, created if missing; asked of the server once per process (`forget_experiment`)."""
    with _lock:
        known = _experiments.get((uri, name))
    if known is not None:
        return known
    found = str(_experiment_id(uri, name))
    with _lock:
        _experiments[(uri, name)] = found
    return found


def forget_experiment(uri: str, name: str) -> None:
    """Ask the server again next time (a call on the experiment failed: it may have been deleted)."""
    with _lock:
        _experiments.pop((uri, name), None)


def _experiment_id(uri: str, name: str) -> str:
    store = _store(uri)
    found = _call(store.experiment_id, name)
    if found is not None:
        return found
    try:
        return str(_call(store.create_experiment, name, artifact_location(uri)))
    except TrackingUnavailable:
        found = _call(store.experiment_id, name)  # created concurrently by another writer
        if found is None:
            raise
        return found


def _on_experiment(uri: str, experiment: str, fn: Any, *args: Any) -> Any:
    """`fn(experiment id, *args)`; a failure forgets the cached id (the experiment may be gone)."""
    try:
        return _call(fn, experiment_id(uri, experiment), *args)
    except TrackingUnavailable:
        forget_experiment(uri, experiment)
        raise


def _find_or_create(uri: str, experiment: str, uid_tag: str, name: str, tags: dict[str, str]) -> str:
    store = _store(uri)
    query = f"tags.`{uid_tag}` = '{tags[uid_tag]}'"
    found, _ = _on_experiment(uri, experiment, store.search_runs, query, 1)
    if found:
        return str(found[0].run_id)
    return str(_on_experiment(uri, experiment, store.create_run, name, tags))


def ensure_parent_run(uri: str, experiment: str, sweep: SweepRef) -> str:
    """The sweep's parent run: found by its uid tag, else created."""
    return _find_or_create(uri, experiment, TAG_SWEEP_UID, sweep.name, sweep.tags())


def ensure_child_run(uri: str, experiment: str, point: PointRef, parent_run_id: str | None) -> str:
    """A point's child run: found by its uid tag, else created (nested under the parent)."""
    return _find_or_create(uri, experiment, TAG_RUN_UID, point.name, point.tags(parent_run_id))


def child_runs(uri: str, experiment: str, parent_run_id: str) -> dict[str, str]:
    """Every child run of a parent, by its TrainingRun uid tag: one paged search for a whole sweep.

    Where two runs carry one uid (never made by this protocol), the newest wins, as in
    `ensure_child_run`.
    """
    store = _store(uri)
    query = f"tags.`{TAG_PARENT}` = '{parent_run_id}'"
    found: dict[str, str] = {}
    token = None
    while True:
        page, token = _on_experiment(uri, experiment, store.search_runs, query, SEARCH_PAGE, token)
        for run in page:
            uid = run.tags.get(TAG_RUN_UID)
            if uid:
                found.setdefault(uid, run.run_id)
        if not token:
            return found


def create_child_run(uri: str, experiment: str, point: PointRef, parent_run_id: str | None) -> str:
    """Create a point's child run (the caller has looked for one: `child_runs`)."""
    return str(_on_experiment(uri, experiment, _store(uri).create_run, point.name, point.tags(parent_run_id)))


def set_run_status(uri: str, run_id: str, state: TrackingState) -> None:
    """End a run (FINISHED, FAILED, KILLED) or open it again (RUNNING: a resumed sweep or point)."""
    _call(_store(uri).set_status, run_id, state.value, state != TrackingState.RUNNING)


def delete_run(uri: str, run_id: str) -> None:
    _call(_store(uri).delete_run, run_id)


def rollback_note(to_step: int, steps: tuple[int, ...], after_attempt: int, when: str) -> str:
    """One line saying which of a run's metric values a rollback superseded. Pure."""
    return (
        f"Rolled back to step {to_step} at {when} after attempt {after_attempt}: the checkpoints of "
        f"step(s) {', '.join(map(str, steps))} no longer count. Metric values of steps after {to_step} "
        f"logged before {when} (attempts <= {after_attempt}) are superseded by the values attempt "
        f"{after_attempt + 1} and later log for the same steps."
    )


def record_rollback(
    uri: str, run_id: str, to_step: int, steps: tuple[int, ...], after_attempt: int, when: str
) -> None:
    """Say on the run which metric values a rollback superseded: a tag, and a line added to its note.

    MLflow's metric history is append-only, so the resumed attempt logs the same steps again; the
    tag (`sphinxx.dev/rollback`) and the note make the superseded values visible, never mixed silently.
    """
    mlflow = client(uri)
    line = rollback_note(to_step, steps, after_attempt, when)
    run = _call(mlflow.get_run, run_id)
    note = run.data.tags.get(TAG_NOTE, "")
    if line not in note:
        _call(mlflow.set_tag, run_id, TAG_NOTE, f"{note}\n\n{line}".strip())
    _call(mlflow.set_tag, run_id, TAG_ROLLBACK, f"to-step={to_step} after-attempt={after_attempt} at={when}")


def log_fit(
    uri: str,
    run_id: str,
    law: ScalingLawStatus,
    png: bytes | None,
    rows: Sequence[PointRow] = (),
    benchmark_pngs: Mapping[str, bytes] | None = None,
) -> None:
    """The scaling law on the parent run: `scaling_law.json`, `fit_*` metrics, a summary tag, the plot.

    The metrics (`results.fit_metrics`) are the same for either form: every coefficient with its
    bootstrap interval, the residual RMS and the leave-one-out error, per held-out domain too, and
    every benchmark's trend (`bench_*`). Where the points were scored on benchmarks, the table of
    every benchmark per point (`benchmarks.json`, columns and data; `benchmarks.txt`, as the CLIs
    print it) and one plot per benchmark (`benchmarks/benchmark_<task>.png`). Every artifact is
    overwritten, never appended to, so logging the same fit again changes nothing.
    """
    mlflow = client(uri)
    _call(mlflow.log_dict, run_id, dump(law, Naming.CAMEL, drop_none=True), "scaling_law.json")
    from mlflow.entities import Metric  # as in client()

    now = int(time.time() * 1000)
    metrics = [Metric(key, value, now, 0) for key, value in fit_metrics(law).items()]
    for start in range(0, len(metrics), 500):  # one request per batch (MLflow takes up to 1000 metrics)
        _call(mlflow.log_batch, run_id, metrics=metrics[start : start + 500])
    _call(mlflow.set_tag, run_id, TAG_SCALING_LAW, (law.summary or law.error)[:5000])
    if benchmark_names(rows):
        table = table_rows(rows)
        columns = list(table[0])
        body = {"columns": columns, "data": [[row[c] for c in columns] for row in table]}
        _call(mlflow.log_dict, run_id, body, "benchmarks.json")
        _call(mlflow.log_text, run_id, benchmark_table(rows) + "\n", "benchmarks.txt")
    with tempfile.TemporaryDirectory() as tmp:
        if png:
            path = Path(tmp) / "scaling_law.png"
            path.write_bytes(png)
            _call(mlflow.log_artifact, run_id, str(path))
        for name, data in (benchmark_pngs or {}).items():
            path = Path(tmp) / plot_name(name)
            path.write_bytes(data)
            _call(mlflow.log_artifact, run_id, str(path), "benchmarks")
