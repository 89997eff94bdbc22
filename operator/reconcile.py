"""The act layer: observe (API, storage, MLflow), call the pure decisions, carry out the action.

Handlers (handlers.py) only say *which* object to reconcile; the functions here read it fresh,
so every trigger (create, update, timer, a RayJob event, an operator restart) runs the same
level-based code:

    admit (sphinxx.schema / sphinxx.sweep) -> observe -> decide.py -> act -> write status

An object is admitted once per pass (the admission is cached) and the result, typed, is what
the rest of the pass uses; status is read and written as the vocabulary's typed `RunStatus` /
`SweepStatus`. One lock per object keeps two triggers of the same object from interleaving inside
one operator process; across processes, peering elects one active operator.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from sphinxx.schema.admission import AdmittedRun, admit_run
from sphinxx.schema.fields import SchemaError
from sphinxx.schema.progress import Reading, read_record
from sphinxx.schema.resources import TrainingRunSpec
from sphinxx.schema.run import RunConfig, StorageConfig, TrainConfig, to_yaml
from sphinxx.schema.status import (
    TERMINAL_RUN_PHASES,
    ConditionType,
    RunPhase,
    RunStatus,
    ScalingLawStatus,
    SweepPhase,
    SweepStatus,
    TrackingState,
    dump_status,
    parse_status,
)
from sphinxx.sweep import mlflow_runs
from sphinxx.sweep.abilities import plot_abilities
from sphinxx.sweep.points import AdmittedSweep, admit_sweep
from sphinxx.sweep.results import fit_sweep, plot_fit

from . import checkpoints, decide, expand, names, status, tracking
from .kube import Kube
from .preflight import check_run
from .render import Attempt, render_rayjob, worker_bounds
from .settings import Settings
from .status import Outcome

log = logging.getLogger("sphinxx.operator")
ANNOTATION_PARENT_RUN = f"{names.GROUP}/mlflow-parent-run-id"

_locks: defaultdict[tuple[str, str, str], threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


class RetryLater(Exception):
    """Nothing is wrong with the object, but a dependency (MLflow, storage) must be waited for."""

    def __init__(self, message: str, delay: float):
        super().__init__(message)
        self.delay = delay

    def __reduce__(self) -> tuple[type, tuple[str, float]]:
        return type(self), (self.args[0], self.delay)  # every exception of ours pickles (see Preempted)


def _lock(kind: str, namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks[(kind, namespace, name)]


def _now() -> tuple[float, str]:
    now = time.time()
    return now, datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def _generation(obj: dict[str, Any]) -> int:
    return int(obj["metadata"].get("generation", 1))


def _write_status(kube: Kube, resource: str, obj: dict[str, Any], new: RunStatus | SweepStatus) -> None:
    old, data = obj.get("status") or {}, dump_status(new)
    if data != old:
        meta = obj["metadata"]
        kube.patch_status(resource, meta["namespace"], meta["name"], expand.merge_diff(old, data))


def _events(kube: Kube, obj: dict[str, Any], events: list[decide.Event]) -> None:
    for type_, reason, message in events:
        try:
            kube.event(obj, type_, reason, message)
        except Exception as err:  # an event is a courtesy: never fail a reconcile over one
            log.warning("event %s on %s not posted: %s", reason, obj["metadata"]["name"], err)


def _status(obj: dict[str, Any], resource: str) -> RunStatus | SweepStatus:
    if resource == "trainingruns":
        return parse_status(RunStatus, obj.get("status"))
    return parse_status(SweepStatus, obj.get("status"))


def mark_invalid(kube: Kube, obj: dict[str, Any], err: SchemaError, resource: str) -> None:
    """A bad spec: phase Failed, condition Invalid naming the field path, one event; nothing created."""
    _, now_iso = _now()
    generation, st = _generation(obj), _status(obj, resource)
    message = f"{err.path}: {err.reason}"
    invalid = status.condition(st.conditions, ConditionType.INVALID)
    if invalid and invalid.status == "True" and invalid.message == message:
        return
    conditions = status.set_condition(
        st.conditions, ConditionType.INVALID, True, "InvalidSpec", message, generation, now_iso
    )
    st.conditions = status.set_condition(
        conditions, ConditionType.READY, False, "InvalidSpec", message, generation, now_iso
    )
    st.phase = RunPhase.FAILED if isinstance(st, RunStatus) else SweepPhase.FAILED
    st.message, st.observed_generation = message, generation
    _write_status(kube, resource, obj, st)
    _events(kube, obj, [("Warning", "InvalidSpec", message)])


def _tracking_failed(
    kube: Kube, obj: dict[str, Any], resource: str, err: Exception, settings: Settings
) -> NoReturn:
    """MLflow is unreachable: TrackingReady=False, one event per outage, then RetryLater."""
    _, now_iso = _now()
    st = _status(obj, resource)
    before = status.condition(st.conditions, ConditionType.TRACKING_READY)
    st.conditions = status.set_condition(
        st.conditions,
        ConditionType.TRACKING_READY,
        False,
        "MLflowUnreachable",
        str(err),
        _generation(obj),
        now_iso,
    )
    _write_status(kube, resource, obj, st)
    if not before or before.status != "False":
        _events(
            kube,
            obj,
            [("Warning", "MLflowUnreachable", f"{err}; retrying every {settings.retry_delay:.0f}s")],
        )
    raise RetryLater(f"MLflow unreachable: {err}", settings.retry_delay)


def _tracked(st: RunStatus | SweepStatus, generation: int, now_iso: str) -> None:
    st.conditions = status.set_condition(
        st.conditions, ConditionType.TRACKING_READY, True, "RunRecorded", "", generation, now_iso
    )


def _settled(obj: dict[str, Any], st: RunStatus | SweepStatus) -> bool:
    """Nothing can change until the user edits the object: skip admission. `st` is its status, parsed.

    True for an Invalid spec already reported at this generation, and for a run that ended
    (Succeeded, or Failed with no new resume request) at this generation. A sweep is never
    settled while its points may still move, so only an Invalid sweep is.
    """
    if st.observed_generation != obj["metadata"].get("generation"):
        return False
    invalid = status.condition(st.conditions, ConditionType.INVALID)
    if invalid and invalid.status == "True":
        return True
    if isinstance(st, SweepStatus):
        return False
    resume = _annotations(obj).get(names.ANNOTATION_RESUME)
    rollback = _annotations(obj).get(names.ANNOTATION_ROLLBACK)
    if rollback and rollback != st.rollback_token:
        return False  # a new rollback request: answered even for a finished run
    return st.phase == RunPhase.SUCCEEDED or (st.phase == RunPhase.FAILED and resume == st.resume_token)


# ------------------------------------------------------------------------------ TrainingRun


def reconcile_run(kube: Kube, namespace: str, name: str, settings: Settings) -> float | None:
    """Bring one TrainingRun one step closer to its spec; returns a requeue delay, if any."""
    with _lock("run", namespace, name):
        obj = kube.get("trainingruns", namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return None
        old = parse_status(RunStatus, obj.get("status"))
        if _settled(obj, old):
            return None
        try:
            admitted = admit_run(name, _run_spec(obj, settings))
        except SchemaError as err:
            mark_invalid(kube, obj, err, "trainingruns")
            return None
        return _reconcile_valid_run(kube, obj, admitted, old, settings)


def _run_spec(obj: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The run's spec with the operator's defaults (settings.RunDefaults) in what it leaves unset."""
    defaults = settings.defaults.pinned((obj.get("status") or {}).get("storageUri"))
    return defaults.apply_run(obj.get("spec") or {})


def _point_ref(obj: dict[str, Any], flavor: str, data_fraction: float) -> mlflow_runs.PointRef:
    """The MLflow identity of a TrainingRun: its object's identity and the point's two axes."""
    meta = obj["metadata"]
    sweep = (meta.get("labels") or {}).get(names.LABEL_SWEEP)
    return mlflow_runs.PointRef(meta["namespace"], meta["name"], meta["uid"], flavor, data_fraction, sweep)


@dataclass(frozen=True)
class RunPass:
    """One pass over a TrainingRun whose spec was admitted: what it is and what it has, before deciding."""

    obj: dict[str, Any]
    admitted: AdmittedRun
    old: RunStatus  # its status as read at the start of the pass
    run_id: str
    tracking_uri: str | None
    mlflow_run: str | None  # its MLflow child run, once that exists
    tracking_error: str | None  # the last try to find or create that run failed (tried again)
    rayjob: dict[str, Any] | None  # the current attempt's RayJob


def _reconcile_valid_run(
    kube: Kube, obj: dict[str, Any], admitted: AdmittedRun, old: RunStatus, settings: Settings
) -> float | None:
    """Observe, decide, act; returns a requeue delay, if any."""
    meta, cfg = obj["metadata"], admitted.config
    now, now_iso = _now()
    tracking_uri = cfg.tracking.uri or settings.tracking_uri
    mlflow_run, tracking_error = _child_run(kube, obj, cfg, old.mlflow_run_id, tracking_uri, settings)
    run = RunPass(
        obj,
        admitted,
        old,
        run_id=old.run_id or names.run_id(meta["namespace"], meta["name"], meta["uid"]),
        tracking_uri=tracking_uri,
        mlflow_run=mlflow_run,
        tracking_error=tracking_error,
        rayjob=_current_rayjob(kube, meta["namespace"], old),
    )
    obs = _observe_run(kube, run, settings, now, now_iso)
    act = decide.decide_run(obs)
    _act_on_run(kube, run, obs, act, settings)
    if tracking_error:  # tried again after the retry delay (the condition and the event say why)
        return min(act.requeue_after or settings.retry_delay, settings.retry_delay)
    return act.requeue_after


def _current_rayjob(kube: Kube, namespace: str, old: RunStatus) -> dict[str, Any] | None:
    """The current attempt's RayJob. Missing from the watch, it is asked of the API before the pass
    decides it is gone (a lost RayJob is retried as a failure): a watch can lag behind a busy API
    server by more than the minute the operator remembers its own writes (cache.Recent)."""
    if not old.ray_job_name:
        return None
    found = kube.get("rayjobs", namespace, old.ray_job_name)
    if found is None and old.phase not in TERMINAL_RUN_PHASES:
        found = kube.get_fresh("rayjobs", namespace, old.ray_job_name)
    return found


def _child_run(
    kube: Kube,
    obj: dict[str, Any],
    cfg: RunConfig,
    known: str | None,
    tracking_uri: str | None,
    settings: Settings,
) -> tuple[str | None, str | None]:
    """(the run's MLflow child run, why it could not be had): the one status names, else what the
    pool found or created (under the sweep's parent); (None, None) while the pool is at it."""
    if not tracking_uri or known:
        return known, None
    meta = obj["metadata"]

    def again() -> None:  # the pool's try ended: a pass takes the id (or the error) now
        _rerun(kube, meta["namespace"], meta["name"], settings)

    try:
        ref = _point_ref(obj, cfg.model.flavor, cfg.data.fraction)
        parent = _annotations(obj).get(ANNOTATION_PARENT_RUN)
        return tracking.child_runs().lookup(tracking_uri, cfg.tracking.experiment, ref, parent, again), None
    except mlflow_runs.TrackingUnavailable as err:
        return None, str(err)


def _rerun(kube: Kube, namespace: str, name: str, settings: Settings) -> None:
    """A pass outside kopf's handlers (the MLflow pool's); its retry is the run's timer."""
    try:
        reconcile_run(kube, namespace, name, settings)
    except RetryLater:
        pass
    except Exception:  # a pass off kopf's handlers: nothing else would log it
        log.exception("reconcile of TrainingRun %s/%s failed", namespace, name)


def _observe_run(
    kube: Kube, run: RunPass, settings: Settings, now: float, now_iso: str
) -> decide.RunObserved:
    """Everything the decision reads: the RayJob in our terms, a rollback carried out, storage,
    the cluster."""
    obj, old, spec, cfg = run.obj, run.old, run.admitted.spec, run.admitted.config
    job = status.observe_rayjob(run.rayjob)
    rollback = _handle_rollback(obj, old, job, cfg.storage, run.run_id, run.tracking_uri, run.mlflow_run)
    started = old.attempt > 0 and old.phase not in TERMINAL_RUN_PHASES  # an attempt that may have committed
    progress = _read_progress(cfg.storage, cfg.train, run.run_id, old.attempt, job, settings, now)
    return decide.RunObserved(
        generation=_generation(obj),
        policy=spec.failure_policy,
        suspend=spec.suspend,
        queued=bool(spec.queue_name),
        bounds=worker_bounds(spec, cfg.parallel),
        status=old,
        job=job,
        job_suspended=bool(((run.rayjob or {}).get("spec") or {}).get("suspend")),
        admitted=decide.admitted(obj),
        resume_token=_annotations(obj).get(names.ANNOTATION_RESUME),
        checkpoint=_latest_when_due(cfg.storage, cfg.train, run.run_id, old, job, progress, settings, now)
        if started
        else None,
        cluster_bounds=_cluster_bounds(kube, obj["metadata"]["namespace"], job),
        now=now,
        now_iso=now_iso,
        rollback=rollback,
        inputs=_preflight(cfg, old, run.rayjob, spec, settings),
        max_preemptions=cfg.parallel.max_preemptions,
        progress=progress,
    )


_checkpoint_reads: dict[str, float] = {}  # run id -> when its checkpoints were last read (epoch s)


def _latest_when_due(
    storage: StorageConfig,
    train: TrainConfig,
    run_id: str,
    old: RunStatus,
    job: status.JobView,
    progress: Reading | None,
    settings: Settings,
    now: float,
) -> decide.Checkpoint | None:
    """The newest committed checkpoint, when `decide.checkpoint_due` says to read it (else None:
    not read this pass, the status keeps what it shows)."""
    reported = progress.record.step if progress is not None and progress.record is not None else None
    known = old.last_checkpoint.step if old.last_checkpoint is not None else None
    if not decide.checkpoint_due(
        job.outcome, _checkpoint_reads.get(run_id), now, settings.checkpoint_read_interval,
        settings.run_interval / 2, reported, known, train.checkpoint_interval,
    ):  # fmt: skip
        return None
    if job.outcome == Outcome.RUNNING:
        _checkpoint_reads[run_id] = now
    else:
        _checkpoint_reads.pop(run_id, None)
    return _latest(storage, run_id)


_progress_reads: dict[str, float] = {}  # run id -> when its progress record was last read (epoch s)


def _read_progress(
    storage: StorageConfig,
    train: TrainConfig,
    run_id: str,
    attempt: int,
    job: status.JobView,
    settings: Settings,
    now: float,
) -> Reading | None:
    """The job's progress record, judged (sphinxx.schema.progress); None when not due this pass.

    Read only while the attempt runs, at most once per `progress_interval` per run, so the
    operator's reads are bounded by its running points whatever triggers a pass.
    """
    last = _progress_reads.get(run_id)
    if not decide.progress_due(job.outcome, last, now, settings.progress_interval, settings.run_interval / 2):
        if job.outcome != Outcome.RUNNING:
            _progress_reads.pop(run_id, None)
        return None
    _progress_reads[run_id] = now
    try:
        data, uri = checkpoints.read_progress(storage.uri, run_id, storage.endpoint_url)
    except Exception as err:  # storage outages must not stop status updates; the next read retries
        return Reading(None, "Unreadable", f"progress record of {run_id} not read: {err}")
    max_age = max(settings.progress_stale, 3 * train.progress_seconds)
    return read_record(data, uri, run_id, attempt, now, max_age, train.log_interval)


def _act_on_run(
    kube: Kube, run: RunPass, obs: decide.RunObserved, act: decide.RunAction, settings: Settings
) -> None:
    """Carry out the decision: a new attempt, the RayJob's changes, MLflow's end; then status and events."""
    cfg, st = run.admitted.config, act.status
    st.run_id, st.model, st.data_fraction = run.run_id, cfg.model.flavor, cfg.data.fraction
    if run.mlflow_run and (run.old.mlflow_run_id or _publish_run_id(run, st, act, settings)):
        st.mlflow_run_id = run.mlflow_run
        _tracked(st, obs.generation, obs.now_iso)
    elif run.tracking_error:
        act.events += _untracked(st, run.tracking_error, obs.generation, obs.now_iso, settings)
    if act.create_attempt is not None:
        launch = _launch(run, st, act.create_attempt, obs.checkpoint, settings)
        act.events += _create_attempt(kube, run.obj, launch, st)
    _act_on_rayjob(kube, run.obj["metadata"]["namespace"], run.rayjob, act, obs.job)
    if act.finish_tracking and run.mlflow_run and run.tracking_uri:
        try:
            mlflow_runs.set_run_status(run.tracking_uri, run.mlflow_run, act.finish_tracking)
        except mlflow_runs.TrackingUnavailable as err:
            log.warning("could not end MLflow run %s: %s", run.mlflow_run, err)
    _write_status(kube, "trainingruns", run.obj, st)
    _events(kube, run.obj, act.events)


def _publish_run_id(run: RunPass, st: RunStatus, act: decide.RunAction, settings: Settings) -> bool:
    """The MLflow run now exists: name it in the stored config of an attempt started without it
    (its job waits for the id there). False when storage failed (status waits; the next pass retries)."""
    if not run.old.config_uri or act.create_attempt is not None:
        return True  # no attempt yet, or a new one whose config names the run from the start
    cfg = run.admitted.config
    st.mlflow_run_id = run.mlflow_run
    text = to_yaml(
        attempt_config(cfg, st, run.tracking_uri, _annotations(run.obj).get(ANNOTATION_PARENT_RUN))
    )
    try:
        checkpoints.write_config(cfg.storage.uri, run.run_id, text, cfg.storage.endpoint_url)
    except Exception as err:  # storage outages must not stop status updates; the next pass retries
        log.warning("MLflow run id of %s not written to %s: %s", run.run_id, run.old.config_uri, err)
        st.mlflow_run_id = None
        act.requeue_after = min(act.requeue_after or settings.retry_delay, settings.retry_delay)
        return False
    return True


def _untracked(
    st: RunStatus, error: str, generation: int, now_iso: str, settings: Settings
) -> list[decide.Event]:
    """MLflow did not answer: TrackingReady=False (the point goes on), one event per outage."""
    before = status.condition(st.conditions, ConditionType.TRACKING_READY)
    st.conditions = status.set_condition(
        st.conditions, ConditionType.TRACKING_READY, False, "MLflowUnreachable", error, generation, now_iso
    )
    if before and before.status == "False":
        return []
    return [("Warning", "MLflowUnreachable", f"{error}; retrying every {settings.retry_delay:.0f}s")]


def _launch(
    run: RunPass, st: RunStatus, attempt: int, checkpoint: decide.Checkpoint | None, settings: Settings
) -> Launch:
    """What attempt `attempt` starts from: the attempt's config, and the checkpoint it resumes from."""
    cfg, parent = run.admitted.config, _annotations(run.obj).get(ANNOTATION_PARENT_RUN)
    return Launch(
        run.admitted.spec,
        attempt_config(cfg, st, run.tracking_uri, parent),
        attempt,
        checkpoint or _latest(cfg.storage, run.run_id),
        settings.image,
        settings.stage_host_path,
    )


def _preflight(
    cfg: RunConfig, old: RunStatus, rayjob: dict[str, Any] | None, spec: Any, settings: Settings
) -> tuple[str, ...] | None:
    """Pre-flight problems before the first RayJob (docs/operator.md, "Pre-flight checks");
    None when not checked."""
    if not settings.preflight or old.attempt > 0 or rayjob is not None or spec.suspend:
        return None
    return tuple(check_run(cfg))


def _handle_rollback(
    obj: dict[str, Any],
    old: RunStatus,
    job: status.JobView,
    storage: StorageConfig,
    run_id: str,
    tracking_uri: str | None,
    mlflow_run: str | None,
) -> decide.RollbackOutcome | None:
    """Carry out a new `sphinxx.dev/rollback` request in storage (and note it on the MLflow run)."""
    request = decide.rollback_request(_annotations(obj).get(names.ANNOTATION_ROLLBACK), old.rollback_token)
    if request is None:
        return None
    refusal = request.error or decide.rollback_refusal(old.phase, job)
    if refusal or request.step is None:
        return decide.RollbackOutcome(request.token, error=refusal or "")
    if not old.attempt:
        return decide.RollbackOutcome(
            request.token, error="the run has not started; there is nothing to roll back"
        )
    meta = obj["metadata"]
    reason = f"kubectl sphinxx rollback of {meta['namespace']}/{meta['name']} after attempt {old.attempt}"
    try:
        done = checkpoints.rollback(storage.uri, run_id, request.step, reason, storage.endpoint_url)
    except Exception as err:  # a refused or failed rollback is reported, never retried on its own
        return decide.RollbackOutcome(request.token, error=f"rollback to step {request.step} failed: {err}")
    if tracking_uri and mlflow_run:
        try:
            mlflow_runs.record_rollback(
                tracking_uri, mlflow_run, done.to_step, done.steps, old.attempt, _now()[1]
            )
        except mlflow_runs.TrackingUnavailable as err:  # the rollback stands; the note is a courtesy
            log.warning("rollback of %s not noted on MLflow run %s: %s", run_id, mlflow_run, err)
    return decide.RollbackOutcome(request.token, done.to_step, done.uri, done.steps)


def _act_on_rayjob(
    kube: Kube, namespace: str, rayjob: dict[str, Any] | None, act: decide.RunAction, job: status.JobView
) -> None:
    """Suspend, unsuspend or delete the attempt's RayJob; set its cluster's worker bounds in place."""
    if rayjob is not None and act.suspend_job is not None:
        kube.patch("rayjobs", namespace, rayjob["metadata"]["name"], {"spec": {"suspend": act.suspend_job}})
    if rayjob is not None and act.delete_job:
        kube.delete("rayjobs", namespace, rayjob["metadata"]["name"])
    if act.patch_cluster is not None and job.cluster:
        _patch_cluster(kube, namespace, job.cluster, act.patch_cluster)
        act.events.append(("Normal", "WorkersRescaled", f"worker pods bounds set to {act.patch_cluster}"))


def _latest(storage: StorageConfig, run_id: str) -> decide.Checkpoint | None:
    try:
        return checkpoints.latest(storage.uri, run_id, storage.endpoint_url)
    except Exception as err:  # storage outages must not stop status updates; the next pass retries
        log.warning("reading checkpoints of %s failed: %s", run_id, err)
        return None


def attempt_config(
    cfg: RunConfig, st: RunStatus, tracking_uri: str | None, parent_run: str | None
) -> RunConfig:
    """The config an attempt's job reads: the admitted config plus the run's identity. Pure.

    With a tracking store and no MLflow run yet, `tracking.await_run_id` tells the job that the
    operator creates the run and writes its id here later (`_publish_run_id`)."""
    tracking = dataclasses.replace(
        cfg.tracking,
        uri=tracking_uri,
        mlflow_run_id=st.mlflow_run_id,
        mlflow_parent_run_id=parent_run,
        await_run_id=bool(tracking_uri) and not st.mlflow_run_id,
    )
    return dataclasses.replace(cfg, run_id=st.run_id or cfg.run_id, tracking=tracking)


@dataclass(frozen=True)
class Launch:
    """What a new attempt starts from."""

    spec: TrainingRunSpec
    config: RunConfig  # attempt_config(...)
    attempt: int
    checkpoint: decide.Checkpoint | None  # the committed checkpoint it resumes from
    image: str
    stage_host_path: str | None = None


def _create_attempt(kube: Kube, obj: dict[str, Any], launch: Launch, st: RunStatus) -> list[decide.Event]:
    """Store the attempt's config next to the checkpoints, create its RayJob, record both in status."""
    meta, cfg = obj["metadata"], launch.config
    text = to_yaml(cfg)
    config_uri = checkpoints.write_config(cfg.storage.uri, cfg.run_id, text, cfg.storage.endpoint_url)
    attempt = Attempt(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta["uid"],
        attempt=launch.attempt,
        config_uri=config_uri,
        image=launch.image,
        sweep=(meta.get("labels") or {}).get(names.LABEL_SWEEP),
        resume_uri=launch.checkpoint.uri if launch.checkpoint else None,
        suspend=launch.spec.suspend,
        stage_host_path=launch.stage_host_path,
    )
    _, created = kube.create("rayjobs", render_rayjob(attempt, launch.spec, cfg))
    # The prefix may be the operator's default: pinned, so a later default never moves the run.
    st.ray_job_name, st.config_uri, st.storage_uri, st.ray_cluster_name = (
        attempt.rayjob_name,
        config_uri,
        cfg.storage.uri,
        None,
    )
    if not created:
        return []
    where = f" from step {launch.checkpoint.step}" if launch.checkpoint else ""
    return [("Normal", "AttemptCreated", f"RayJob {attempt.rayjob_name} (attempt {attempt.attempt}){where}")]


def _gpu_group(cluster: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    groups = (cluster.get("spec") or {}).get("workerGroupSpecs") or []
    return next(((i, g) for i, g in enumerate(groups) if g.get("groupName") == "gpu"), None)


def _cluster_bounds(kube: Kube, namespace: str, job: status.JobView) -> tuple[int, int] | None:
    """The worker group's bounds on a running attempt's RayCluster (None when not running)."""
    if job.outcome != Outcome.RUNNING:
        return None
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
    if cluster is None or found is None:
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
    """Deletion: remove every attempt's RayJob; end (or delete) the MLflow run;
    keep checkpoints unless told."""
    meta, st = obj["metadata"], parse_status(RunStatus, obj.get("status"))
    namespace, name = meta["namespace"], meta["name"]
    for rayjob in kube.list("rayjobs", namespace, labels=f"{names.LABEL_RUN}={name}"):
        kube.delete("rayjobs", namespace, rayjob["metadata"]["name"])
    try:
        admitted = admit_run(name, _run_spec(obj, settings))
    except SchemaError:
        return
    cfg, delete = admitted.config, admitted.spec.delete_policy == "Delete"
    uri, run_id = cfg.tracking.uri or settings.tracking_uri, st.mlflow_run_id
    try:
        if uri and run_id and delete:
            mlflow_runs.delete_run(uri, run_id)
        elif uri and run_id and st.phase not in TERMINAL_RUN_PHASES:
            mlflow_runs.set_run_status(uri, run_id, TrackingState.KILLED)
    except mlflow_runs.TrackingUnavailable as err:  # deletion must not hang on MLflow
        log.warning("MLflow run %s of %s/%s not updated on deletion: %s", run_id, namespace, name, err)
    if delete and st.run_id:
        checkpoints.delete_run(cfg.storage.uri, st.run_id, cfg.storage.endpoint_url)


# ------------------------------------------------------------------------------ ScalingSweep


def _admit_sweep(obj: dict[str, Any], settings: Settings) -> AdmittedSweep:
    return admit_sweep(obj["metadata"]["name"], obj.get("spec") or {}, settings.defaults.apply_run)


def reconcile_sweep(kube: Kube, namespace: str, name: str, settings: Settings) -> None:
    with _lock("sweep", namespace, name):
        obj = kube.get("scalingsweeps", namespace, name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return
        if _settled(obj, parse_status(SweepStatus, obj.get("status"))):
            return
        try:
            admitted = _admit_sweep(obj, settings)
        except SchemaError as err:
            mark_invalid(kube, obj, err, "scalingsweeps")
            return
        _reconcile_valid_sweep(kube, obj, admitted, settings)


def _reconcile_valid_sweep(
    kube: Kube, obj: dict[str, Any], admitted: AdmittedSweep, settings: Settings
) -> None:
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    _, now_iso = _now()
    tracking_uri = admitted.base.tracking.uri or settings.tracking_uri
    parent = parse_status(SweepStatus, obj.get("status")).mlflow_run_id
    if tracking_uri and not parent:
        ref = mlflow_runs.SweepRef(namespace, name, meta["uid"])
        try:
            parent = mlflow_runs.ensure_parent_run(tracking_uri, admitted.base.tracking.experiment, ref)
        except mlflow_runs.TrackingUnavailable as err:
            _tracking_failed(kube, obj, "scalingsweeps", err, settings)
    children = kube.list("trainingruns", namespace, labels=f"{names.LABEL_SWEEP}={name}")
    act = decide.decide_sweep(
        obj, admitted.spec, children, _annotations(obj).get(names.ANNOTATION_RESUME), now_iso
    )
    _apply_child_plan(kube, namespace, act, parent, now_iso)
    st = act.status
    if parent:
        st.mlflow_run_id = parent
        _tracked(st, _generation(obj), now_iso)
    if act.fit:
        st.scaling_law = _fit(st, tracking_uri, parent, name)
    if act.tracking_status and parent and tracking_uri:  # after the fit: it logs on the open run
        try:
            mlflow_runs.set_run_status(tracking_uri, parent, act.tracking_status)
            st.mlflow_run_status = act.tracking_status
        except mlflow_runs.TrackingUnavailable as err:
            log.warning(
                "MLflow parent run %s not set %s (retried next pass): %s", parent, act.tracking_status, err
            )
    _write_status(kube, "scalingsweeps", obj, st)
    _events(kube, obj, act.events)


def _apply_child_plan(
    kube: Kube, namespace: str, act: decide.SweepAction, parent: str | None, now_iso: str
) -> None:
    """Create, patch, admit, resume and delete the sweep's TrainingRuns as the decision says."""
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
        token = act.status.resume_token
        kube.patch(
            "trainingruns",
            namespace,
            child_name,
            {"metadata": {"annotations": {names.ANNOTATION_RESUME: token}}},
        )


def _fit(st: SweepStatus, tracking_uri: str | None, parent: str | None, sweep: str) -> ScalingLawStatus:
    """Fit the scaling law over the succeeded points (sweep core); log it and its plot on the parent run."""
    law, result, inputs = fit_sweep(st.points)
    if tracking_uri and parent:
        try:
            png = plot_fit(inputs, result, f"sweep {sweep}") if result is not None else None
            benchmark_pngs = plot_abilities(st.points, law.benchmarks, f"sweep {sweep}")
            mlflow_runs.log_fit(tracking_uri, parent, law, png, st.points, benchmark_pngs)
        except Exception as err:  # the fit is in status either way
            log.warning("scaling law not logged to MLflow: %s", err)
    return law


def finalize_sweep(kube: Kube, obj: dict[str, Any], settings: Settings) -> None:
    """Deletion: the points go by owner references (their own finalizers end their runs)."""
    st = parse_status(SweepStatus, obj.get("status"))
    try:
        base = _admit_sweep(obj, settings).base
    except SchemaError:
        return
    uri, run_id = base.tracking.uri or settings.tracking_uri, st.mlflow_run_id
    if uri and run_id and st.phase not in (SweepPhase.SUCCEEDED, SweepPhase.FAILED):
        try:
            mlflow_runs.set_run_status(uri, run_id, TrackingState.KILLED)
        except mlflow_runs.TrackingUnavailable as err:
            log.warning("MLflow parent run %s not ended: %s", run_id, err)
