"""The act layer: observe (API, storage, MLflow), call the pure decisions, carry out the action.

Handlers (handlers.py) only say *which* object to reconcile; the functions here read it fresh,
so every trigger (create, update, timer, a RayJob event, an operator restart) runs the same
level-based code. One lock per object keeps two triggers of the same object from interleaving
inside one operator process; across processes, peering elects one active operator.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import yaml

from sphinxx.jobs.schema import run as run_config
from sphinxx.jobs.schema.admission import admit_run, resolve_layer
from sphinxx.jobs.schema.fields import SchemaError
from sphinxx.jobs.schema.flavors import FLAVORS
from sphinxx.jobs.schema.status import TERMINAL_RUN_PHASES
from sphinxx.jobs.sweep import mlflow_runs as tracking
from sphinxx.jobs.sweep.points import admit_sweep

from . import checkpoints, decide, expand, names, status
from .kube import Kube
from .render import Attempt, render_rayjob, worker_bounds
from .settings import Settings

log = logging.getLogger("sphinxx.operator")
ANNOTATION_PARENT_RUN = f"{names.GROUP}/mlflow-parent-run-id"

_locks: defaultdict[tuple[str, str, str], threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


class RetryLater(Exception):
    """Nothing is wrong with the object, but a dependency (MLflow, storage) must be waited for."""

    def __init__(self, message: str, delay: float):
        super().__init__(message)
        self.delay = delay


def _lock(kind: str, namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks[(kind, namespace, name)]


def _now() -> tuple[float, str]:
    now = time.time()
    return now, datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def _write_status(kube: Kube, resource: str, obj: dict[str, Any], new: dict[str, Any]) -> None:
    old = obj.get("status") or {}
    if new != old:
        meta = obj["metadata"]
        kube.patch_status(resource, meta["namespace"], meta["name"], expand.merge_diff(old, new))


def _events(kube: Kube, obj: dict[str, Any], events: list[decide.Event]) -> None:
    for type_, reason, message in events:
        try:
            kube.event(obj, type_, reason, message)
        except Exception as err:  # an event is a courtesy: never fail a reconcile over one
            log.warning("event %s on %s not posted: %s", reason, obj["metadata"]["name"], err)


def mark_invalid(kube: Kube, obj: dict[str, Any], err: SchemaError, resource: str) -> None:
    """A bad spec: phase Failed, condition Invalid naming the field path, one event; nothing created."""
    _, now_iso = _now()
    generation = int(obj["metadata"].get("generation", 1))
    st = dict(obj.get("status") or {})
    message = f"{err.path}: {err.reason}"
    invalid = status.condition(st.get("conditions"), "Invalid")
    if invalid and invalid.get("status") == "True" and invalid.get("message") == message:
        return
    conditions = status.set_condition(
        st.get("conditions") or [], "Invalid", True, "InvalidSpec", message, generation, now_iso
    )
    conditions = status.set_condition(conditions, "Ready", False, "InvalidSpec", message, generation, now_iso)
    st.update(phase="Failed", message=message, conditions=conditions, observedGeneration=generation)
    _write_status(kube, resource, obj, st)
    _events(kube, obj, [("Warning", "InvalidSpec", message)])


def _tracking_failed(
    kube: Kube, obj: dict[str, Any], resource: str, err: Exception, settings: Settings
) -> None:
    _, now_iso = _now()
    st = dict(obj.get("status") or {})
    generation = int(obj["metadata"].get("generation", 1))
    before = status.condition(st.get("conditions"), "TrackingReady")
    st["conditions"] = status.set_condition(
        st.get("conditions") or [], "TrackingReady", False, "MLflowUnreachable", str(err), generation, now_iso
    )
    _write_status(kube, resource, obj, st)
    if not before or before.get("status") != "False":
        _events(
            kube,
            obj,
            [("Warning", "MLflowUnreachable", f"{err}; retrying every {settings.retry_delay:.0f}s")],
        )
    raise RetryLater(f"MLflow unreachable: {err}", settings.retry_delay)


def _tracked(st: dict[str, Any], generation: int, now_iso: str) -> None:
    st["conditions"] = status.set_condition(
        st.get("conditions") or [], "TrackingReady", True, "RunRecorded", "", generation, now_iso
    )


def _settled(obj: dict[str, Any], sweep: bool = False) -> bool:
    """Nothing can change until the user edits the object: skip the (costly) validation.

    True for an Invalid spec already reported at this generation, and for a run that ended
    (Succeeded, or Failed with no new resume request) at this generation. A sweep is never
    settled while its points may still move, so only an Invalid sweep is.
    """
    meta, st = obj["metadata"], obj.get("status") or {}
    if st.get("observedGeneration") != meta.get("generation"):
        return False
    invalid = status.condition(st.get("conditions"), "Invalid")
    if invalid and invalid.get("status") == "True":
        return True
    if sweep:
        return False
    resume = _annotations(obj).get(names.ANNOTATION_RESUME)
    return st.get("phase") == "Succeeded" or (st.get("phase") == "Failed" and resume == st.get("resumeToken"))


# ------------------------------------------------------------------------------ TrainingRun


def reconcile_run(kube: Kube, namespace: str, name: str, settings: Settings) -> float | None:
    """Bring one TrainingRun one step closer to its spec; returns a requeue delay, if any."""
    with _lock("run", namespace, name):
        obj = kube.get("trainingruns", namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp") or _settled(obj):
            return None
        try:
            admitted = admit_run(name, _run_spec(obj, settings))
        except SchemaError as err:
            mark_invalid(kube, obj, err, "trainingruns")
            return None
        return _reconcile_valid_run(kube, obj, admitted.spec, admitted.config, settings)


def _run_spec(obj: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The run's spec with the operator's defaults (settings.RunDefaults) in what it leaves unset."""
    defaults = settings.defaults.pinned((obj.get("status") or {}).get("storageUri"))
    return defaults.apply_run(obj.get("spec") or {})


def _reconcile_valid_run(kube: Kube, obj: dict[str, Any], spec, cfg, settings: Settings) -> float | None:
    meta = obj["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
    generation = int(meta.get("generation", 1))
    old = obj.get("status") or {}
    now, now_iso = _now()
    run_id = old.get("runId") or names.run_id(namespace, name, uid)
    tracking_uri = cfg.tracking.uri or settings.tracking_uri
    mlflow_run = old.get("mlflowRunId")
    if tracking_uri and not mlflow_run:
        try:
            mlflow_run = tracking.ensure_child_run(
                tracking_uri,
                cfg.tracking.experiment,
                namespace,
                name,
                uid,
                _annotations(obj).get(ANNOTATION_PARENT_RUN),
                {"sphinxx.dev/model": cfg.model.flavor, "sphinxx.dev/data-fraction": str(cfg.data.fraction)},
            )
        except tracking.TrackingUnavailable as err:
            _tracking_failed(kube, obj, "trainingruns", err, settings)

    rayjob = kube.get("rayjobs", namespace, old["rayJobName"]) if old.get("rayJobName") else None
    job = status.observe_rayjob(rayjob)
    cluster_bounds = _cluster_bounds(kube, namespace, job) if job.outcome == "running" else None
    checkpoint = None
    if int(old.get("attempt", 0)) > 0 and old.get("phase") not in TERMINAL_RUN_PHASES:
        checkpoint = _latest(cfg, run_id)
    obs = decide.RunObserved(
        generation=generation,
        policy=spec.failure_policy,
        suspend=spec.suspend,
        queued=bool(spec.queue_name),
        bounds=worker_bounds(spec, cfg),
        status=old,
        job=job,
        job_suspended=bool(((rayjob or {}).get("spec") or {}).get("suspend")),
        admitted=decide.admitted(obj),
        resume_token=_annotations(obj).get(names.ANNOTATION_RESUME),
        checkpoint=checkpoint,
        cluster_bounds=cluster_bounds,
        now=now,
        now_iso=now_iso,
    )
    act = decide.decide_run(obs)
    st = act.status
    st.update(runId=run_id, model=cfg.model.flavor, dataFraction=cfg.data.fraction)
    if mlflow_run:
        st["mlflowRunId"] = mlflow_run
        _tracked(st, generation, now_iso)
    if act.create_attempt is not None:
        checkpoint = obs.checkpoint or _latest(cfg, run_id)
        _create_attempt(kube, obj, spec, cfg, st, act, run_id, tracking_uri, checkpoint, settings.image)
    if rayjob is not None and act.suspend_job is not None:
        kube.patch("rayjobs", namespace, rayjob["metadata"]["name"], {"spec": {"suspend": act.suspend_job}})
    if rayjob is not None and act.delete_job:
        kube.delete("rayjobs", namespace, rayjob["metadata"]["name"])
    if act.patch_cluster is not None and job.cluster:
        _patch_cluster(kube, namespace, job.cluster, act.patch_cluster)
        act.events.append(("Normal", "WorkersRescaled", f"worker pods bounds set to {act.patch_cluster}"))
    if act.finish_tracking and mlflow_run and tracking_uri:
        try:
            tracking.finish_run(tracking_uri, mlflow_run, act.finish_tracking)
        except tracking.TrackingUnavailable as err:
            log.warning("could not end MLflow run %s: %s", mlflow_run, err)
    _write_status(kube, "trainingruns", obj, st)
    _events(kube, obj, act.events)
    return act.requeue_after


def _latest(cfg: run_config.RunConfig, run_id: str) -> decide.Checkpoint | None:
    try:
        return checkpoints.latest(cfg.storage.uri, run_id, cfg.storage.endpoint_url)
    except Exception as err:  # storage outages must not stop status updates; the next pass retries
        log.warning("reading checkpoints of %s failed: %s", run_id, err)
        return None


def _create_attempt(kube, obj, spec, cfg, st, act, run_id, tracking_uri, checkpoint, image: str) -> None:
    meta = obj["metadata"]
    job_cfg = dataclasses.replace(
        cfg,
        run_id=run_id,
        tracking=dataclasses.replace(
            cfg.tracking,
            uri=tracking_uri,
            mlflow_run_id=st.get("mlflowRunId"),
            mlflow_parent_run_id=_annotations(obj).get(ANNOTATION_PARENT_RUN),
        ),
    )
    # Plain YAML of the resolved dataclasses (what `load_config(file=...)` reads back); much
    # cheaper than building an omegaconf tree just to print it.
    text = yaml.safe_dump(run_config.to_dict(job_cfg), sort_keys=False)
    config_uri = checkpoints.write_config(cfg.storage.uri, run_id, text, cfg.storage.endpoint_url)
    attempt = Attempt(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta["uid"],
        attempt=act.create_attempt,
        config_uri=config_uri,
        image=image,
        sweep=(meta.get("labels") or {}).get(names.LABEL_SWEEP),
        resume_uri=checkpoint.uri if checkpoint else None,
        suspend=spec.suspend,
    )
    _, created = kube.create("rayjobs", render_rayjob(attempt, spec, job_cfg))
    # The prefix may be the operator's default: pinned, so a later default never moves the run.
    st.update(rayJobName=attempt.rayjob_name, configUri=config_uri, storageUri=cfg.storage.uri)
    st.pop("rayClusterName", None)
    if created:
        where = f" from step {checkpoint.step}" if checkpoint else ""
        act.events.append(
            ("Normal", "AttemptCreated", f"RayJob {attempt.rayjob_name} (attempt {attempt.attempt}){where}")
        )


def _gpu_group(cluster: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    groups = (cluster.get("spec") or {}).get("workerGroupSpecs") or []
    return next(((i, g) for i, g in enumerate(groups) if g.get("groupName") == "gpu"), None)


def _cluster_bounds(kube: Kube, namespace: str, job: status.JobView) -> tuple[int, int] | None:
    cluster = kube.get("rayclusters", namespace, job.cluster) if job.cluster else None
    found = _gpu_group(cluster) if cluster else None
    if found is None:
        return None
    group = found[1]
    return int(group.get("minReplicas", 0)), int(group.get("maxReplicas", 0))


def _patch_cluster(kube: Kube, namespace: str, name: str, bounds: tuple[int, int]) -> None:
    """Set the worker group's bounds in place: the job keeps running; Ray Train resizes itself."""
    cluster = kube.get("rayclusters", namespace, name)
    found = _gpu_group(cluster) if cluster else None
    if found is None:
        return
    index, group = found
    low, high = bounds
    replicas = min(max(int(group.get("replicas", low)), low), high)
    path = f"/spec/workerGroupSpecs/{index}"
    kube.patch_json(
        "rayclusters",
        namespace,
        name,
        [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": cluster["metadata"]["resourceVersion"],
            },
            {"op": "add", "path": f"{path}/minReplicas", "value": low},
            {"op": "add", "path": f"{path}/maxReplicas", "value": high},
            {"op": "add", "path": f"{path}/replicas", "value": replicas},
        ],
    )


def finalize_run(kube: Kube, obj: dict[str, Any], settings: Settings) -> None:
    """Deletion: remove every attempt's RayJob; end (or delete) the MLflow run; keep checkpoints unless told."""
    meta, st = obj["metadata"], obj.get("status") or {}
    namespace, name = meta["namespace"], meta["name"]
    for rayjob in kube.list("rayjobs", namespace, labels=f"{names.LABEL_RUN}={name}"):
        kube.delete("rayjobs", namespace, rayjob["metadata"]["name"])
    spec = obj.get("spec") or {}
    try:
        cfg = admit_run(name, _run_spec(obj, settings)).config
    except SchemaError:
        return
    uri, run_id = cfg.tracking.uri or settings.tracking_uri, st.get("mlflowRunId")
    delete = spec.get("deletePolicy") == "Delete"
    try:
        if uri and run_id and delete:
            tracking.delete_run(uri, run_id)
        elif uri and run_id and st.get("phase") not in TERMINAL_RUN_PHASES:
            tracking.finish_run(uri, run_id, "KILLED")
    except tracking.TrackingUnavailable as err:  # deletion must not hang on MLflow
        log.warning("MLflow run %s of %s/%s not updated on deletion: %s", run_id, namespace, name, err)
    if delete and st.get("runId"):
        checkpoints.delete_run(cfg.storage.uri, st["runId"], cfg.storage.endpoint_url)


# ------------------------------------------------------------------------------ ScalingSweep


def reconcile_sweep(kube: Kube, namespace: str, name: str, settings: Settings) -> None:
    with _lock("sweep", namespace, name):
        obj = kube.get("scalingsweeps", namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp") or _settled(obj, sweep=True):
            return
        try:
            spec = admit_sweep(name, settings.defaults.apply_sweep(obj.get("spec") or {}), settings.defaults.apply_run)
        except SchemaError as err:
            mark_invalid(kube, obj, err, "scalingsweeps")
            return
        _reconcile_valid_sweep(kube, obj, spec, settings)


def _reconcile_valid_sweep(kube: Kube, obj: dict[str, Any], spec, settings: Settings) -> None:
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    _, now_iso = _now()
    base = resolve_layer(settings.defaults.apply_config(obj["spec"].get("base") or {}), "spec.base")
    tracking_uri = base.tracking.uri or settings.tracking_uri
    parent = (obj.get("status") or {}).get("mlflowRunId")
    if tracking_uri and not parent:
        try:
            parent = tracking.ensure_parent_run(
                tracking_uri, base.tracking.experiment, namespace, name, meta["uid"]
            )
        except tracking.TrackingUnavailable as err:
            _tracking_failed(kube, obj, "scalingsweeps", err, settings)
    children = kube.list("trainingruns", namespace, labels=f"{names.LABEL_SWEEP}={name}")
    act = decide.decide_sweep(obj, spec, children, _annotations(obj).get(names.ANNOTATION_RESUME), now_iso)
    admit = set(act.admit)
    for child in act.plan.create:
        annotations = child["metadata"].setdefault("annotations", {})
        if parent:
            annotations[ANNOTATION_PARENT_RUN] = parent
        if child["metadata"]["name"] in admit:
            annotations[names.ANNOTATION_ADMITTED] = now_iso
            admit.discard(child["metadata"]["name"])
        kube.create("trainingruns", child)
    for child_name in sorted(set(act.plan.update) | set(act.plan.annotate)):
        body: dict[str, Any] = {}
        if child_name in act.plan.update:
            body["spec"] = act.plan.update[child_name]
        if child_name in act.plan.annotate:
            body["metadata"] = {"annotations": act.plan.annotate[child_name]}
        kube.patch("trainingruns", namespace, child_name, body)
    for child_name in act.plan.delete:
        kube.delete("trainingruns", namespace, child_name)
    for child_name in sorted(admit):
        kube.patch(
            "trainingruns",
            namespace,
            child_name,
            {"metadata": {"annotations": {names.ANNOTATION_ADMITTED: now_iso}}},
        )
    for child_name in act.resume:
        token = act.status["resumeToken"]
        kube.patch(
            "trainingruns",
            namespace,
            child_name,
            {"metadata": {"annotations": {names.ANNOTATION_RESUME: token}}},
        )
    st = act.status
    if parent:
        st["mlflowRunId"] = parent
        _tracked(st, int(meta.get("generation", 1)), now_iso)
    if st["phase"] == "Succeeded" and "scalingLaw" not in st:
        st["scalingLaw"] = _fit(st["points"], tracking_uri, parent)
    if act.tracking_status and parent and tracking_uri:  # after the fit: it logs on the open run
        try:
            tracking.set_run_status(tracking_uri, parent, act.tracking_status)
            st["mlflowRunStatus"] = act.tracking_status
        except tracking.TrackingUnavailable as err:
            log.warning(
                "MLflow parent run %s not set %s (retried next pass): %s", parent, act.tracking_status, err
            )
    _write_status(kube, "scalingsweeps", obj, st)
    _events(kube, obj, act.events)


def _fit(rows: list[dict[str, Any]], tracking_uri: str | None, parent: str | None) -> dict[str, Any]:
    """Fit the scaling law over the succeeded points; log it (and its plot) on the parent run."""
    try:
        from sphinxx.jobs.sweep.scaling_law import Point, fit, plot_png
    except ImportError as err:  # numpy/scipy missing: the sweep is still complete
        return {"error": f"scaling-law fit unavailable: {err}"}
    points = [
        Point(
            params=float(FLAVORS[r["model"]].params), data=r["dataFraction"], loss=float(r["loss"])
        )
        for r in rows
        if r.get("loss") is not None
    ]
    try:
        result = fit(points)
    except ValueError as err:
        return {"error": str(err)}
    summary = status.scaling_law_status(result)
    if tracking_uri and parent:
        try:
            tracking.log_scaling_law(
                tracking_uri, parent, result.to_dict(), result.summary(), plot_png(points, result)
            )
        except Exception as err:  # the fit is in status either way
            log.warning("scaling law not logged to MLflow: %s", err)
    return summary


def finalize_sweep(kube: Kube, obj: dict[str, Any], settings: Settings) -> None:
    """Deletion: the points go by owner references (their own finalizers end their runs)."""
    st = obj.get("status") or {}
    try:
        base = resolve_layer(
            settings.defaults.apply_config((obj.get("spec") or {}).get("base") or {}), "spec.base"
        )
    except SchemaError:
        return
    uri, run_id = base.tracking.uri or settings.tracking_uri, st.get("mlflowRunId")
    if uri and run_id and st.get("phase") not in TERMINAL_RUN_PHASES:
        try:
            tracking.finish_run(uri, run_id, "KILLED")
        except tracking.TrackingUnavailable as err:
            log.warning("MLflow parent run %s not ended: %s", run_id, err)
