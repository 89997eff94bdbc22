"""MLflow tracking for a training run: one run across attempts, never a reason to stop training.

Protocol (docs/training.md, "MLflow tracking from rank 0"):
- Run identity comes from outside when an operator (or the local sweep runner) runs us:
  `tracking.mlflow_run_id` in the config it wrote. Otherwise the job looks for the id it recorded next to its
  checkpoints on an earlier attempt, and only then creates a run and records its id there, so a
  retry continues the same run (`resolve_run_id`).
- Only world rank 0 tracks (`MLflowTracker`); every other rank gets `NullTracker`, a no-op with
  the same methods, so the training loop has no `if rank == 0` branches around tracking.
- Metrics carry the global step. After a resume, steps <= the restored step are dropped
  (`skip_through`): MLflow metric history is append-only and those points already exist.
- All calls go through one background thread. If the server is unreachable the calls stay
  queued in order, a warning says so once per outage, and they are replayed when it answers
  again. Client errors (HTTP 4xx: e.g. a param whose value changed) are logged and dropped.

MLflow (3-4 s to import) is imported inside the calls that use it: ranks other than 0 and runs with
`tracking.enabled: false` never import it (a GPU machine may not have it installed at all).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sphinxx.jobs.context import Worker
from sphinxx.schema.run import TrackingConfig
from sphinxx.storage import CheckpointStore
from sphinxx.sweep.mlflow_runs import artifact_location

log = logging.getLogger("sphinxx.tracking")

# MLflow's own HTTP retries back off for minutes (7 retries, factor 2): far longer than we want
# one call to block the sender. We retry ourselves, so a call should fail fast.
_FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
MAX_METRICS_PER_CALL = 1000  # mlflow.utils.validation.MAX_METRICS_PER_BATCH
MAX_PARAMS_PER_CALL = 100  # MAX_PARAMS_TAGS_PER_BATCH
MAX_PARAM_LENGTH = 6000


def _fast_fail() -> None:
    for key, value in _FAST_FAIL_ENV.items():
        os.environ.setdefault(key, value)


def tracking_uri(configured: str | None) -> str:
    """Config first, then MLFLOW_TRACKING_URI, then a local store of the user's, never the cwd.

    MLflow's own default is a store in the *current* directory: a `python -m sphinxx.jobs.train`
    run from a repository would leave `mlflow.db` and `mlruns/` there, and Ray workers, which do not
    run in the driver's directory, would look for the run in another store ("Run ... not found").
    So the default is one absolute place, `$SPHINXX_HOME/mlflow.db` (`~/.sphinxx` unless set),
    resolved where the job starts and carried in the config to every worker.
    """
    found = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if found:
        return found
    home = Path(os.environ.get("SPHINXX_HOME") or Path.home() / ".sphinxx").resolve()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


class RunIdPending(RuntimeError):
    """The operator has not written the run's MLflow run id into the stored config yet (retried)."""


def stored_run_id(store: CheckpointStore) -> str | None:
    """`tracking.mlflow_run_id` of the run's stored config (where the operator names the run)."""
    import yaml  # as in load_config

    text = store.read_run_config()
    data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if text else None
    tracking = data.get("tracking") if isinstance(data, dict) else None
    found = tracking.get("mlflow_run_id") if isinstance(tracking, dict) else None
    return str(found) if found else None


def awaited_run_id(store: CheckpointStore) -> str:
    """The run id the operator wrote (`tracking.await_run_id`); RunIdPending until it has."""
    found = stored_run_id(store)
    if found is None:
        raise RunIdPending(f"the operator has not named the MLflow run in {store.layout.run_config} yet")
    return found


def is_client_error(err: Exception) -> bool:
    """True for errors retrying cannot fix (HTTP 4xx other than 429)."""
    status = getattr(err, "get_http_status_code", lambda: 500)()
    return 400 <= status < 500 and status != 429


class NullTracker:
    """Tracks nothing (ranks other than 0, or tracking switched off)."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def skip_through(self, step: int) -> None: ...
    def flush(self, timeout: float = 30.0) -> bool:
        return True

    def close(self, timeout: float = 60.0) -> bool:
        return True


def resolve_run_id(
    uri: str | None,
    experiment: str,
    run_name: str,
    configured: str | None,
    recorded: str | None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[str, bool]:
    """(run id, created) following the protocol above; raises if a run must be created and MLflow is down."""
    if configured:
        return configured, False
    if recorded:
        return recorded, False
    return create_run(uri, experiment, run_name, parent_run_id, tags), True


def create_run(
    uri: str | None,
    experiment: str,
    run_name: str,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    from mlflow import MlflowClient

    _fast_fail()
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    location = artifact_location(uri) if uri else None
    experiment_id = (
        found.experiment_id if found else client.create_experiment(experiment, artifact_location=location)
    )
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    return client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id


class MLflowTracker:
    """Rank 0's tracker: an ordered queue of MLflow calls drained by one background thread.

    `run_id=None` creates the run from the thread once MLflow answers (then `on_created` records
    it), so even a run that starts while MLflow is down loses no metrics.
    """

    def __init__(
        self,
        uri: str | None,
        run_id: str | None,
        experiment: str = "sphinxx",
        run_name: str = "run",
        on_created: Callable[[str], None] | None = None,
        retry_max_s: float = 10.0,
        resolve: Callable[[], str] | None = None,
    ):
        from mlflow import MlflowClient

        _fast_fail()
        self.uri = uri
        self.run_id = run_id
        self._experiment = experiment
        self._run_name = run_name
        self._on_created = on_created
        self._resolve = resolve  # where the run id comes from when not given (default: create the run)
        self._client = MlflowClient(tracking_uri=uri)
        self._retry_max_s = retry_max_s
        self._min_step = -1
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0  # ops queued but not yet done (guarded by _lock)
        self._lock = threading.Condition()
        self._closed = False
        self.down_since: float | None = None
        self.outages = 0
        self.replayed = 0
        if run_id is not None:
            self._submit(lambda c: c.update_run(self._run(), status="RUNNING"))
        self._thread = threading.Thread(target=self._drain, name="mlflow-tracker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params not yet on the run; a changed value is kept as it was (MLflow forbids edits)."""
        from mlflow.entities import Param

        clean = {str(k): str(v)[:MAX_PARAM_LENGTH] for k, v in params.items()}

        def send(client: Any) -> None:
            existing = client.get_run(self._run()).data.params
            changed = sorted(k for k, v in clean.items() if k in existing and existing[k] != v)
            if changed:
                log.warning("MLflow params keep their first values; changed this attempt: %s", changed)
            new = [Param(k, v) for k, v in clean.items() if k not in existing]
            for i in range(0, len(new), MAX_PARAMS_PER_CALL):
                client.log_batch(self._run(), params=new[i : i + MAX_PARAMS_PER_CALL], synchronous=True)

        self._submit(send)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step <= self._min_step:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        items = [Metric(k, float(v), stamp, step) for k, v in metrics.items() if v is not None]
        if items:
            self._submit(("metrics", items))

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        self._submit(lambda c: c.log_batch(self._run(), tags=items, synchronous=True))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._submit(lambda c: c.log_text(self._run(), text, artifact_file))

    def skip_through(self, step: int) -> None:
        """Drop metrics for steps <= `step` (already logged before the checkpoint we resumed from)."""
        self._min_step = max(self._min_step, step)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued call went through; False if MLflow stayed away that long."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.5))
        return True

    def close(self, timeout: float = 60.0) -> bool:
        """Flush (bounded) and stop the thread; warns with the number of calls lost if MLflow is down."""
        done = self.flush(timeout)
        if not done:
            log.warning(
                "MLflow at %s unreachable at exit: %d queued tracking calls are lost "
                "(training is unaffected)",
                self.uri,
                self._pending,
            )
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=5)
        return done

    # ------------------------------------------------------------------ sender thread

    def _run(self) -> str:
        assert self.run_id is not None, "run not created yet"
        return self.run_id

    def _submit(self, op: Any) -> None:
        with self._lock:
            self._pending += 1
        self._queue.put(op)

    def _done(self, count: int) -> None:
        with self._lock:
            self._pending -= count
            self._lock.notify_all()

    def _next_batch(self, first: Any) -> tuple[Any, int]:
        """Merge queued metric ops behind `first` into one call (MLflow takes 1000 per call)."""
        if not (isinstance(first, tuple) and first[0] == "metrics"):
            return first, 1
        items, count = list(first[1]), 1
        while len(items) < MAX_METRICS_PER_CALL:
            try:
                nxt = self._queue.queue[0]  # peek; only this thread consumes
            except IndexError:
                break
            if not (isinstance(nxt, tuple) and nxt[0] == "metrics"):
                break
            if len(items) + len(nxt[1]) > MAX_METRICS_PER_CALL:
                break
            items.extend(self._queue.get_nowait()[1])
            count += 1
        return ("metrics", items), count

    def _execute(self, op: Any) -> None:
        if self.run_id is None:
            if self._resolve is not None:
                self.run_id = self._resolve()
            else:
                self.run_id = create_run(self.uri, self._experiment, self._run_name)
            log.info("tracking to MLflow run %s", self.run_id)
            if self._on_created is not None:
                self._on_created(self.run_id)
        if isinstance(op, tuple) and op[0] == "metrics":
            self._client.log_batch(self._run(), metrics=op[1], synchronous=True)
        else:
            op(self._client)

    def _drain(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            op, count = self._next_batch(first)
            delay = 0.5
            while True:
                try:
                    self._execute(op)
                    break
                except Exception as err:  # noqa: BLE001 - a deliberate boundary: tracking never stops training
                    if is_client_error(err):
                        log.warning("MLflow rejected a tracking call, dropped: %s", err)
                        break
                    if self.down_since is None:
                        self.down_since = time.monotonic()
                        self.outages += 1
                        log.warning(
                            "MLflow at %s unreachable (%s); "
                            "buffering metrics and retrying, training continues",
                            self.uri,
                            str(err).splitlines()[0][:200],
                        )
                    if self._closed:
                        break
                    time.sleep(delay)
                    delay = min(delay * 2, self._retry_max_s)
            if self.down_since is not None:
                log.warning(
                    "MLflow reachable again after %.0f s; replaying %d buffered calls",
                    time.monotonic() - self.down_since,
                    self._queue.qsize() + count,
                )
                self.replayed += self._queue.qsize() + count
                self.down_since = None
            self._done(count)


def open_tracker(
    tracking: TrackingConfig,
    run_id: str,
    worker: Worker,
    store: CheckpointStore | None,
    *,
    restored_step: int = 0,
    params: dict[str, Any] | None = None,
    config_text: str | None = None,
    tags: dict[str, Any] | None = None,
) -> MLflowTracker | NullTracker:
    """Rank 0's MLflow tracker of run `run_id` (the `tracking` section); the no-op tracker on
    other ranks and when `tracking.enabled` is false.

    The MLflow run is the driver's (`worker.mlflow_run_id`), or created once MLflow answers and
    recorded in the store's `run.json` (with `tracking.await_run_id`: the one the operator names in
    the stored config, read until it is there; calls are buffered meanwhile); metrics of steps up
    to `restored_step` are dropped (already logged by the attempt that committed them). `params`,
    `tags` and `config_text` (as `config.yaml`) are logged once.
    """
    if worker.rank != 0 or not tracking.enabled:
        return NullTracker()

    def record(mlflow_run_id: str) -> None:
        if store is not None:
            store.write_run_manifest(code_version=worker.code_version, extra={"mlflow_run_id": mlflow_run_id})

    awaited = store if tracking.await_run_id and worker.mlflow_run_id is None else None
    tracker = MLflowTracker(
        tracking_uri(tracking.uri), worker.mlflow_run_id, tracking.experiment, run_id, on_created=record,
        retry_max_s=10.0, resolve=(lambda: awaited_run_id(awaited)) if awaited is not None else None,
    )  # fmt: skip
    tracker.skip_through(restored_step)
    tracker.log_params(params or {})
    tracker.set_tags(tags or {})
    if config_text is not None:
        tracker.log_text(config_text, "config.yaml")
    return tracker
