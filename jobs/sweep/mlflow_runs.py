"""MLflow run identity, owned by the operator: one parent run per sweep, one nested child per point.

Protocol (orchestration.md 3.6): runs are found by tag before they are created, so a retried
handler or a restarted operator never makes a second run (`sphinxx.dev/sweep-uid`,
`sphinxx.dev/trainingrun-uid`); the child's id goes to TrainingRun status before any RayJob
exists and travels to every attempt (`MLFLOW_RUN_ID`), so retries continue the same run. The
operator ends the run when the TrainingRun is terminal. An unreachable server raises
`TrackingUnavailable`, which the reconcile layer turns into a condition and a retry, never a
crash loop.
"""

from __future__ import annotations

import os
import threading
from typing import Any

TAG_SWEEP_UID = "sphinxx.dev/sweep-uid"
TAG_RUN_UID = "sphinxx.dev/trainingrun-uid"
TAG_PARENT = "mlflow.parentRunId"
# MLflow's own HTTP retries back off for minutes; the operator retries on its own schedule.
FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}

_clients: dict[str, Any] = {}
_lock = threading.Lock()


class TrackingUnavailable(RuntimeError):
    """The tracking server did not answer (or answered with a server error)."""


def _client(uri: str) -> Any:
    for key, value in FAST_FAIL_ENV.items():
        os.environ.setdefault(key, value)
    from mlflow.tracking import MlflowClient

    with _lock:
        if uri not in _clients:
            _clients[uri] = MlflowClient(tracking_uri=uri)
        return _clients[uri]


def _call(fn, *args: Any, **kwargs: Any) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return fn(*args, **kwargs)
    except MlflowException as err:
        raise TrackingUnavailable(str(err).splitlines()[0]) from err
    except OSError as err:  # connection refused, DNS, timeouts (requests' errors are OSErrors)
        raise TrackingUnavailable(f"{type(err).__name__}: {err}") from err


def _experiment_id(client: Any, name: str) -> str:
    experiment = _call(client.get_experiment_by_name, name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return _call(client.create_experiment, name)
    except TrackingUnavailable:
        experiment = _call(client.get_experiment_by_name, name)  # created concurrently by another writer
        if experiment is None:
            raise
        return experiment.experiment_id


def _find_or_create(uri: str, experiment: str, tag: str, uid: str, name: str, tags: dict[str, str]) -> str:
    client = _client(uri)
    experiment_id = _experiment_id(client, experiment)
    found = _call(client.search_runs, [experiment_id], filter_string=f"tags.`{tag}` = '{uid}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = _call(client.create_run, experiment_id, run_name=name, tags={tag: uid, **tags})
    return run.info.run_id


def ensure_parent_run(uri: str, experiment: str, namespace: str, name: str, uid: str) -> str:
    return _find_or_create(
        uri,
        experiment,
        TAG_SWEEP_UID,
        uid,
        name,
        {"sphinxx.dev/kind": "ScalingSweep", "sphinxx.dev/namespace": namespace},
    )


def ensure_child_run(
    uri: str,
    experiment: str,
    namespace: str,
    name: str,
    uid: str,
    parent_run_id: str | None,
    tags: dict[str, str],
) -> str:
    extra = {"sphinxx.dev/kind": "TrainingRun", "sphinxx.dev/namespace": namespace, **tags}
    if parent_run_id:
        extra[TAG_PARENT] = parent_run_id
    return _find_or_create(uri, experiment, TAG_RUN_UID, uid, name, extra)


def finish_run(uri: str, run_id: str, status: str) -> None:
    """FINISHED, FAILED or KILLED."""
    client = _client(uri)
    _call(client.set_terminated, run_id, status=status)


def set_run_status(uri: str, run_id: str, status: str) -> None:
    """End a run (FINISHED, FAILED, KILLED) or open it again (RUNNING: a resumed sweep)."""
    if status == "RUNNING":
        _call(_client(uri).update_run, run_id, status=status)
    else:
        finish_run(uri, run_id, status)


def delete_run(uri: str, run_id: str) -> None:
    _call(_client(uri).delete_run, run_id)


def log_scaling_law(uri: str, run_id: str, fit: dict[str, Any], summary: str, png: bytes | None) -> None:
    import tempfile
    from pathlib import Path

    client = _client(uri)
    _call(client.log_dict, run_id, fit, "scaling_law.json")
    _call(client.set_tag, run_id, "sphinxx.dev/scaling-law", summary[:5000])
    if png:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "scaling_law.png"
            path.write_bytes(png)
            _call(client.log_artifact, run_id, str(path))
