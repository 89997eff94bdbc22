"""Driver-side bookkeeping of a training attempt: run identity before, the summary after.

Kept apart from the entrypoint (`train.py`) so that both halves are testable without Ray:

- `prepare_run` stores the resolved config next to the checkpoints (`config.yaml`) and settles
  the MLflow run (tracking.resolve_run_id): from the operator (tracking.mlflow_run_id),
  from an earlier attempt (recorded in `run.json`), or created now and recorded. If MLflow is
  unreachable the job still starts: rank 0 creates the run once MLflow answers. With
  `tracking.await_run_id` (the operator started the job before the run existed) the job creates
  no run: it takes the id the operator writes into the stored config, now or, on rank 0, once it
  is there. With `tracking.enabled` false there is no MLflow run at all.
- `run_summary` reads the committed state back from the store (the source of truth, not Ray's
  metrics), ends a run the job owns, and returns the fields of the final JSON line.
- `committed_stops` reads the run's planned stops (preemptions, resizes) from the newest
  committed checkpoint: where the driver's count of segments starts (`jobs/segments.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from sphinxx.jobs.stores import run_store
from sphinxx.jobs.tracking import resolve_run_id, stored_run_id
from sphinxx.schema.run import RunConfig, StorageConfig, to_yaml

log = logging.getLogger("sphinxx.driver")


@dataclass
class PreparedRun:
    mlflow_run_id: str | None
    owns_mlflow_run: bool  # created by this job (now or on an earlier attempt), so it ends it
    resumed_from: int | None  # latest committed step at start, if any


def prepare_run(cfg: RunConfig, attempt: int, code_version: str) -> PreparedRun:
    store = run_store(cfg.run_id, cfg.storage, attempt)
    awaiting = cfg.tracking.enabled and cfg.tracking.await_run_id and not cfg.tracking.mlflow_run_id
    named = stored_run_id(store) if awaiting else None  # the operator may have named it since we read
    if named:
        cfg = replace(cfg, tracking=replace(cfg.tracking, mlflow_run_id=named))
    if not awaiting or named:  # else the operator's file stays: it is where the run id will appear
        store.write_run_config(to_yaml(cfg))
    manifest = store.write_run_manifest(code_version=code_version)
    recorded = manifest.get("extra", {}).get("mlflow_run_id")
    latest = store.latest()
    if not cfg.tracking.enabled:
        return PreparedRun(None, False, None if latest is None else latest.step)
    if cfg.tracking.await_run_id:  # the operator's run: never created or ended here
        return PreparedRun(cfg.tracking.mlflow_run_id, False, None if latest is None else latest.step)
    try:
        run_id, created = resolve_run_id(
            cfg.tracking.uri,
            cfg.tracking.experiment,
            cfg.run_id,
            cfg.tracking.mlflow_run_id,
            recorded,
            cfg.tracking.mlflow_parent_run_id,
            tags={"sphinxx.run": cfg.run_id},
        )
    except Exception as err:  # noqa: BLE001 - tracking never blocks training
        log.warning("MLflow unreachable at start (%s); rank 0 will create the run when it answers", err)
        return PreparedRun(None, True, None if latest is None else latest.step)
    if created:
        store.write_run_manifest(code_version=code_version, extra={"mlflow_run_id": run_id})
    return PreparedRun(run_id, created or run_id == recorded, None if latest is None else latest.step)


def committed_stops(run_id: str, storage: StorageConfig) -> tuple[int, int]:
    """(preemptions, resizes) as the newest committed checkpoint records them; (0, 0) without one."""
    latest = run_store(run_id, storage).latest()
    metrics = latest.manifest.metrics if latest is not None else {}
    return int(metrics.get("preemptions", 0)), int(metrics.get("resizes", 0))


def run_summary(
    cfg: RunConfig, run: PreparedRun, final: dict[str, Any] | None, error: Any, seconds: float
) -> dict[str, Any]:
    """Fields of the final JSON line; `status` is 'succeeded' only if the last step is committed."""
    store = run_store(cfg.run_id, cfg.storage)
    latest = store.latest()
    final = final or {}
    manifest_id = (store.read_run_manifest() or {}).get("extra", {}).get("mlflow_run_id")
    mlflow_run_id = run.mlflow_run_id or manifest_id
    done = error is None and latest is not None and latest.manifest.metadata.final
    out: dict[str, Any] = {
        "status": "succeeded" if done else "failed",
        "step": latest.step if latest else 0,
        "checkpoint_uri": latest.uri if latest else None,
        "final_loss": (latest.manifest.metrics.get("loss") if latest else None),
        "tokens_seen": final.get("tokens_seen"),
        "num_params": final.get("num_params"),
        "num_params_total": final.get("num_params_total"),
        "mfu": final.get("mfu"),
        "mfu_peak_source": final.get("mfu_peak_source"),
        "tokens_per_s": final.get("tokens_per_s"),
        "world_size": latest.manifest.metadata.world_size if latest else None,
        "resumed_from": run.resumed_from,
        "mlflow_run_id": mlflow_run_id,
        "seconds": round(seconds, 1),
    }
    if error is not None:
        out["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:500]
    elif not done:
        out["error"] = "training returned without committing its final checkpoint"
    if run.owns_mlflow_run and mlflow_run_id:
        _end_mlflow_run(cfg.tracking.uri, mlflow_run_id, out["status"])
    return out


def _end_mlflow_run(tracking_uri: str | None, run_id: str, status: str) -> None:
    """Close a run this job created (an operator-owned run is closed by the operator)."""
    try:
        from mlflow import MlflowClient  # the one MLflow call of the driver, only for a run it owns

        MlflowClient(tracking_uri).set_terminated(run_id, "FINISHED" if status == "succeeded" else "FAILED")
    except Exception as err:  # noqa: BLE001 - tracking never fails the job
        log.warning("could not end MLflow run %s: %s", run_id, err)
