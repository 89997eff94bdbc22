"""Reconcile decisions: (spec, observed state) -> what to do. Pure: no API calls, no clock, no randomness.

`decide_run` is the TrainingRun state machine; `decide_sweep` composes expansion, admission and
the roll-up. The reconcile layer (reconcile.py) gathers the observations, calls these, and
carries out the returned action. Everything is level-based: the same observation always gives
the same action, so a restarted operator or a repeated event converges instead of duplicating
(attempt names are deterministic, so even a repeated create is a harmless 409).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sphinxx.schema.progress import ProgressRecord, Reading, clock
from sphinxx.schema.resources import FailurePolicy, ScalingSweepSpec
from sphinxx.schema.status import (
    TERMINAL_RUN_PHASES,
    BenchmarkScore,
    CheckpointRef,
    Condition,
    ConditionType,
    RollbackStatus,
    RunPhase,
    RunProgress,
    RunStatus,
    SweepPhase,
    SweepStatus,
    TrackingState,
    parse_status,
)
from sphinxx.sweep.points import points

from . import expand, names, status
from .status import JobDeploymentStatus, JobView, Outcome

Event = tuple[str, str, str]  # (type Normal|Warning, reason, message)


@dataclass(frozen=True)
class Checkpoint:
    step: int
    uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    benchmarks: dict[str, BenchmarkScore] = field(default_factory=dict)  # eval.benchmarks' entries


@dataclass(frozen=True)
class RollbackRequest:
    """A new `sphinxx.dev/rollback` annotation ("<step>@<time>"); `error` when it is malformed."""

    token: str
    step: int | None
    error: str = ""


@dataclass(frozen=True)
class RollbackOutcome:
    """What the reconcile layer did with a request: rolled back (`steps`), or why not (`error`)."""

    token: str
    to_step: int | None = None
    uri: str | None = None
    steps: tuple[int, ...] = ()
    error: str = ""


def rollback_request(annotation: str | None, acted: str | None) -> RollbackRequest | None:
    """The rollback the annotation asks for, or None when there is none or it was acted on. Pure."""
    if not annotation or annotation == acted:
        return None
    head = annotation.split("@", 1)[0].strip()
    if not head.isdigit():
        return RollbackRequest(
            annotation,
            None,
            f"{names.ANNOTATION_ROLLBACK}={annotation!r} is not '<step>@<time>' "
            "(use kubectl sphinxx rollback)",
        )
    return RollbackRequest(annotation, int(head))


def rollback_refusal(phase: RunPhase | None, job: JobView) -> str | None:
    """Why the run may not be rolled back now, or None. Pure.

    Only while no attempt can write: a live attempt would keep committing past the rollback.
    """
    if phase == RunPhase.SUCCEEDED:
        return "the run succeeded; a rollback would not resume anything"
    if job.outcome == Outcome.SUSPENDED and job.reason == JobDeploymentStatus.SUSPENDING:
        return "the attempt is still suspending; roll back once the run is Suspended"
    if job.outcome.is_live:
        return (
            f"the attempt is {job.outcome}: suspend the run (spec.suspend: true) or wait until it is Failed, "
            "then roll back"
        )
    return None


@dataclass(frozen=True)
class RunObserved:
    generation: int
    policy: FailurePolicy
    suspend: bool
    queued: bool  # a Kueue queue name is set: suspend deletes the RayJob instead of toggling it
    bounds: tuple[int, int]  # desired worker pods (min, max)
    status: RunStatus
    job: JobView
    job_suspended: bool  # the current RayJob's spec.suspend
    admitted: bool
    resume_token: str | None  # value of the sphinxx.dev/resume annotation
    checkpoint: Checkpoint | None
    cluster_bounds: tuple[int, int] | None  # worker group bounds of the RayJob's RayCluster
    now: float  # epoch seconds
    now_iso: str
    rollback: RollbackOutcome | None = None  # a rollback request handled in this pass
    inputs: tuple[str, ...] | None = None  # pre-flight problems (preflight.check_run); None = not checked
    max_preemptions: int = 20  # config.parallel.max_preemptions: preemptions are not retries
    progress: Reading | None = None  # the job's progress record, read this pass; None = not read


@dataclass
class RunAction:
    status: RunStatus
    create_attempt: int | None = None
    suspend_job: bool | None = None
    delete_job: bool = False
    patch_cluster: tuple[int, int] | None = None
    finish_tracking: TrackingState | None = None  # FINISHED | FAILED
    requeue_after: float | None = None
    events: list[Event] = field(default_factory=list)


def backoff(policy: FailurePolicy, retries_used: int) -> float:
    """Seconds to wait before retry number `retries_used + 1`: doubling, capped."""
    return min(policy.backoff_seconds * 2**retries_used, policy.max_backoff_seconds)


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Next(NamedTuple):
    """The phase a pass decides for a run, with the reason and message its conditions and event carry."""

    phase: RunPhase
    reason: str
    message: str


def decide_run(obs: RunObserved) -> RunAction:
    """The TrainingRun state machine: requests first (resume, rollback), then the phase, then status."""
    st = copy.deepcopy(obs.status)
    old_phase = st.phase
    act = RunAction(status=st)
    resume_now = _manual_resume(obs, st, old_phase, act)
    resume_now = _rollback(obs, st, old_phase, act) or resume_now
    _mirror(obs, st)
    _record(obs, act, old_phase, _next_phase(obs, st, act, resume_now))
    st.progress = live_progress(st.progress, obs.progress, obs.checkpoint, st.phase)
    if obs.progress is not None:
        reported = obs.progress.record is not None
        st.conditions = status.set_condition(
            st.conditions, ConditionType.PROGRESS_REPORTED, reported, obs.progress.reason,
            obs.progress.message, obs.generation, obs.now_iso,
        )  # fmt: skip
    return act


def progress_due(
    outcome: Outcome, last_read: float | None, now: float, interval: float, slack: float
) -> bool:
    """Read the run's progress record in this pass? Only while its attempt runs, and at most once
    per `interval` seconds (less `slack`, so a timer tick a little early does not skip a read). Pure."""
    if outcome != Outcome.RUNNING:
        return False
    return last_read is None or now - last_read >= interval - slack


def checkpoint_due(
    outcome: Outcome,
    last_read: float | None,
    now: float,
    interval: float,
    slack: float,
    reported_step: int | None,
    known_step: int | None,
    checkpoint_interval: int,
) -> bool:
    """Read the run's newest committed checkpoint in this pass? Pure.

    Every pass while the attempt is not running (starting, ended: what comes next depends on the
    commits). While it runs, at most once per `interval` seconds (less `slack`) - unless the
    progress record just read (`reported_step`) is past the next `checkpoint_interval` boundary
    after the newest commit the status shows (`known_step`), so a commit there may exist: then
    now, and again each pass that reads such a record until the status shows it. A run commits
    every `checkpoint_interval` steps; reading S3 on every 15 s tick of 1,000 running points
    lists checkpoints for nothing.
    """
    if outcome != Outcome.RUNNING or last_read is None:
        return True
    if (
        reported_step is not None
        and reported_step >= ((known_step or 0) // checkpoint_interval + 1) * checkpoint_interval
    ):
        return True
    return now - last_read >= interval - slack


def _epoch_iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _from_record(record: ProgressRecord) -> RunProgress:
    """The status figures of a usable record, rounded to what a reader needs."""
    eta = round(record.eta_seconds) if record.eta_seconds is not None else None
    return RunProgress(
        step=record.step,
        total_steps=record.total_steps or None,
        loss=round(record.loss, 4) if record.loss is not None else None,
        tokens_per_second=round(record.tokens_per_s, 1),
        mfu=round(record.mfu, 4) if record.mfu is not None else None,
        seconds_per_step=round(record.seconds_per_step, 3) if record.seconds_per_step else None,
        eta_seconds=eta,
        eta=clock(eta) if eta is not None else None,
        attempt=record.attempt,
        updated_at=_epoch_iso(record.time),
    )


def live_progress(
    old: RunProgress | None, reading: Reading | None, checkpoint: Checkpoint | None, phase: RunPhase | None
) -> RunProgress | None:
    """`status.progress` after a pass. Pure.

    A usable record replaces the figures; a record read but unusable (missing, malformed, stale,
    of an older attempt) keeps them but drops the ETA; no read keeps everything. The newest
    committed checkpoint wins when it is further along (step and loss), and the ETA is only
    shown while the run is Running.
    """
    if reading is not None and reading.record is not None:
        new = _from_record(reading.record)
    elif old is not None:
        new = copy.deepcopy(old)
        if reading is not None:
            new.eta_seconds, new.eta = None, None
    else:
        new = None
    if checkpoint is not None and (new is None or checkpoint.step > new.step):
        new = new or RunProgress()
        new.step, new.loss, new.updated_at = checkpoint.step, checkpoint.metrics.get("loss"), None
        if new.total_steps and new.seconds_per_step and new.eta_seconds is not None:
            new.eta_seconds = round(max(new.total_steps - new.step, 0) * new.seconds_per_step)
            new.eta = clock(new.eta_seconds)
    if new is not None and phase != RunPhase.RUNNING:
        new.eta_seconds, new.eta = None, None
    return new


def _mirror(obs: RunObserved, st: RunStatus) -> None:
    """Copy what was observed into status: the newest checkpoint, worker bounds and counts, the cluster."""
    if obs.checkpoint is not None:
        st.last_checkpoint = CheckpointRef(step=obs.checkpoint.step, uri=obs.checkpoint.uri)
        if obs.checkpoint.metrics:
            st.metrics = dict(obs.checkpoint.metrics)
        st.benchmarks = copy.deepcopy(obs.checkpoint.benchmarks)  # every later commit carries them on
        # The job counts its planned stops in every commit (jobs/segments.py); never backwards
        # within a run, so a rollback to an older commit does not hide the preemptions it had.
        st.preemptions = max(st.preemptions, int(obs.checkpoint.metrics.get("preemptions", 0)))
        st.resizes = max(st.resizes, int(obs.checkpoint.metrics.get("resizes", 0)))
    st.workers = {"min": obs.bounds[0], "max": obs.bounds[1], **obs.job.workers}
    if obs.job.cluster:
        st.ray_cluster_name = obs.job.cluster


def _resumable(obs: RunObserved, attempt: int) -> bool:
    """A new cluster would resume (not start fresh): a later attempt, or a committed checkpoint exists."""
    return attempt > 1 or obs.checkpoint is not None


def _next_phase(obs: RunObserved, st: RunStatus, act: RunAction, resume_now: bool) -> Next:
    """Where the run goes from what its RayJob says; sets on `act` what must be done to get there."""
    job, old_phase = obs.job, st.phase
    if not obs.admitted and st.attempt == 0:
        return Next(RunPhase.QUEUED, "WaitingForSlot", "waiting for a slot under the sweep's maxParallelRuns")
    if obs.suspend and old_phase not in TERMINAL_RUN_PHASES:
        return _suspend(obs, act)
    if job.outcome == Outcome.NONE:
        return _without_rayjob(obs, st, act, resume_now)
    if obs.queued and (job.outcome == Outcome.SUSPENDED or obs.job_suspended):
        # Kueue suspends a queued RayJob until admission (and again on preemption) and
        # unsuspends it itself: never toggle it, wait. A fresh cluster resumes from S3.
        phase = RunPhase.RESUMING if _resumable(obs, st.attempt) else RunPhase.PENDING
        return Next(phase, "WaitingForAdmission", f"attempt {st.attempt} waits for Kueue admission")
    if job.outcome == Outcome.SUSPENDED or (obs.job_suspended and not obs.suspend):
        act.suspend_job = False  # KubeRay starts a fresh cluster, which resumes from S3
        return Next(RunPhase.RESUMING, "Unsuspended", "resuming from the last committed checkpoint")
    return _follow_rayjob(obs, st, act, resume_now)


def _suspend(obs: RunObserved, act: RunAction) -> Next:
    """`spec.suspend`: stop the running attempt (checkpoints are kept) and start none."""
    if obs.queued and obs.job.outcome.is_unfinished:
        # Kueue owns spec.suspend of a queued RayJob (docs/operator.md, "Suspend and Kueue"); a
        # job it holds suspended would start on admission, so our suspend deletes the attempt.
        act.delete_job = True
    elif obs.job.outcome.is_live and not obs.job_suspended:
        act.suspend_job = True
    return Next(RunPhase.SUSPENDED, "Suspended", "suspended by spec.suspend; checkpoints are kept")


def _without_rayjob(obs: RunObserved, st: RunStatus, act: RunAction, resume_now: bool) -> Next:
    """No RayJob for the current attempt: stay ended, wait for inputs, start one, or count a lost one."""
    old_phase, attempt = st.phase, st.attempt
    if old_phase == RunPhase.SUCCEEDED or (old_phase == RunPhase.FAILED and not resume_now):
        ended = old_phase or RunPhase.PENDING  # nothing to start: the run stays as it is
        return Next(ended, str(ended), st.message)
    if attempt == 0 and obs.inputs:
        # Blocked before any GPU is allocated; rechecked on every tick until the inputs are there.
        message = "pre-flight check failed: " + "; ".join(obs.inputs)
        if message != st.message:
            act.events.append(("Warning", "InputsUnreadable", message))
        return Next(RunPhase.PENDING, "InputsUnreadable", message)
    if attempt == 0 or resume_now or old_phase == RunPhase.SUSPENDED:
        act.create_attempt = attempt + 1
        phase = RunPhase.RESUMING if _resumable(obs, attempt) or attempt else RunPhase.PENDING
        # the message the next pass reads off the new RayJob too: one status write, not two
        return Next(phase, "AttemptCreated", f"attempt {attempt + 1} is starting")
    return _retry(obs, st, act, attempt, "RayJobMissing", "the attempt's RayJob is gone")


def _follow_rayjob(obs: RunObserved, st: RunStatus, act: RunAction, resume_now: bool) -> Next:
    """The attempt's RayJob exists and is not suspended: its outcome decides."""
    job, attempt = obs.job, st.attempt
    if job.outcome.is_starting:
        phase = RunPhase.RESUMING if _resumable(obs, attempt) else RunPhase.PENDING
        return Next(phase, job.reason or phase, job.message or f"attempt {attempt} is starting")
    if job.outcome == Outcome.RUNNING:
        if obs.cluster_bounds is not None and obs.cluster_bounds != obs.bounds:
            act.patch_cluster = obs.bounds
        return Next(RunPhase.RUNNING, "Running", f"attempt {attempt} is running")
    if job.outcome == Outcome.SUCCEEDED:
        return Next(RunPhase.SUCCEEDED, "Succeeded", f"finished in attempt {attempt}")
    if job.outcome == Outcome.INVALID:
        return Next(RunPhase.FAILED, "ValidationFailed", job.message or "KubeRay rejected the RayJob")
    if resume_now:  # the attempt failed and a resume (or a rollback) asks for the next one now
        return _resume_attempt(obs, st, act)
    if preempted_attempt(obs.checkpoint, attempt, obs.max_preemptions):
        return _after_preemption(obs, st, act, attempt)
    return _retry(obs, st, act, attempt, job.reason, job.message)


def preempted_attempt(checkpoint: Checkpoint | None, attempt: int, max_preemptions: int) -> bool:
    """Whether a failed attempt ended in a preemption the run may still resume from: its newest
    commit is the step its workers committed when asked to stop (`preempted_in_attempt`, written by
    the job), and the run's preemptions are within `parallel.max_preemptions`. Pure."""
    if checkpoint is None or checkpoint.metrics.get("preempted_in_attempt") != attempt:
        return False
    return int(checkpoint.metrics.get("preemptions", 0)) <= max_preemptions


def _after_preemption(obs: RunObserved, st: RunStatus, act: RunAction, attempt: int) -> Next:
    """A preempted attempt: the next one at once, using no retry and no backoff (preemptions
    have their own bound, `parallel.max_preemptions`)."""
    step = obs.checkpoint.step if obs.checkpoint is not None else 0
    act.create_attempt = attempt + 1
    act.events.append(
        (
            "Normal",
            "Preempted",
            f"attempt {attempt} was preempted after committing step {step} "
            f"({st.preemptions} of {obs.max_preemptions} preemptions); attempt {attempt + 1} resumes there",
        )
    )
    return Next(RunPhase.RESUMING, "Preempted", f"attempt {attempt} preempted; attempt {attempt + 1} resumes")


def _resume_attempt(obs: RunObserved, st: RunStatus, act: RunAction) -> Next:
    """A Failed run resumed by hand or rolled back: the next attempt at once."""
    attempt = st.attempt
    act.create_attempt = attempt + 1
    if st.last_rollback is not None and obs.rollback is not None and not obs.rollback.error:
        step = st.last_rollback.to_step
        return Next(
            RunPhase.RESUMING, "RolledBack", f"attempt {attempt + 1} resumes from step {step} (rollback)"
        )
    return Next(RunPhase.RESUMING, "ResumeRequested", f"attempt {attempt + 1} created by resume")


def _record(obs: RunObserved, act: RunAction, old_phase: RunPhase | None, step: Next) -> None:
    """Write the decided phase into status: the new attempt, MLflow's end, the transition event."""
    st, (phase, reason, message) = act.status, step
    if act.create_attempt is not None:
        st.last_failure_time = None
        st.attempt = act.create_attempt
    if phase in TERMINAL_RUN_PHASES and old_phase != phase:
        act.finish_tracking = TrackingState.FINISHED if phase == RunPhase.SUCCEEDED else TrackingState.FAILED
    if phase != old_phase:
        kind = "Warning" if phase == RunPhase.FAILED else "Normal"
        act.events.append((kind, reason, f"{old_phase or 'New'} -> {phase}: {message}"))
    st.phase, st.message, st.observed_generation = phase, message, obs.generation
    st.conditions = _run_conditions(obs, st.conditions, step)
    st.conditions = _preempted_condition(obs, st)


def _run_conditions(obs: RunObserved, conditions: list[Condition], step: Next) -> list[Condition]:
    """The phase's conditions, Invalid=False (the spec was admitted), and Blocked when inputs were checked."""
    generation, now = obs.generation, obs.now_iso
    conditions = status.run_conditions(conditions, step.phase, step.reason, step.message, generation, now)
    conditions = status.set_condition(conditions, ConditionType.INVALID, False, "Valid", "", generation, now)
    if obs.inputs is None:
        return conditions
    if obs.inputs:
        return status.set_condition(
            conditions, ConditionType.BLOCKED, True, "InputsUnreadable", step.message, generation, now
        )
    readable = "every input readable, the checkpoint prefix writable"
    return status.set_condition(
        conditions, ConditionType.BLOCKED, False, "InputsReadable", readable, generation, now
    )


def _preempted_condition(obs: RunObserved, st: RunStatus) -> list[Condition]:
    """Preempted=True once the run was preempted (the count and its bound); absent before."""
    if not st.preemptions:
        return st.conditions
    over = st.preemptions > obs.max_preemptions
    reason = "PreemptionsExhausted" if over else "Preempted"
    message = (
        f"preempted {st.preemptions} time(s), each resumed from the step it committed; "
        f"parallel.max_preemptions is {obs.max_preemptions}"
    )
    return status.set_condition(
        st.conditions, ConditionType.PREEMPTED, True, reason, message, obs.generation, obs.now_iso
    )


def _manual_resume(obs: RunObserved, st: RunStatus, old_phase: RunPhase | None, act: RunAction) -> bool:
    """A new `sphinxx.dev/resume` value restarts a Failed run with a fresh retry budget."""
    if not obs.resume_token or obs.resume_token == st.resume_token:
        return False
    st.resume_token = obs.resume_token
    if old_phase != RunPhase.FAILED:
        act.events.append(
            ("Normal", "ResumeIgnored", f"the run is {old_phase or 'new'}; only Failed runs resume")
        )
        return False
    st.retries = 0
    act.events.append(("Normal", "ResumeRequested", f"resume requested ({obs.resume_token})"))
    return True


def _rollback(obs: RunObserved, st: RunStatus, old_phase: RunPhase | None, act: RunAction) -> bool:
    """Record a handled rollback; a Failed run then starts a new attempt (fresh retry budget)."""
    done = obs.rollback
    if done is None:
        return False
    st.rollback_token = done.token
    if done.error or done.to_step is None:
        act.events.append(("Warning", "RollbackRefused", done.error or "no step to roll back to"))
        return False
    st.last_rollback = RollbackStatus(
        request=done.token,
        to_step=done.to_step,
        rolled_back_steps=list(done.steps),
        after_attempt=st.attempt,
        time=obs.now_iso,
    )
    st.last_checkpoint = CheckpointRef(step=done.to_step, uri=done.uri or "")
    listed = ", ".join(str(s) for s in done.steps)
    act.events.append(
        (
            "Normal",
            "RolledBack",
            f"step(s) {listed} rolled back (kept); the next attempt resumes from step {done.to_step}",
        )
    )
    if old_phase != RunPhase.FAILED:
        return False  # a Suspended run resumes from there when it is unsuspended
    st.retries = 0
    return True


def _retry(obs: RunObserved, st: RunStatus, act: RunAction, attempt: int, reason: str, message: str) -> Next:
    """A failed attempt: the next one after backoff, or Failed once the retries are used up."""
    if st.retries >= obs.policy.max_retries:
        return Next(
            RunPhase.FAILED,
            "RetriesExhausted",
            f"attempt {attempt} failed ({reason}: {message}); no retries left",
        )
    failed_at = _epoch(st.last_failure_time)
    if failed_at is None:
        st.last_failure_time = obs.now_iso
        failed_at = obs.now
        act.events.append(("Warning", "AttemptFailed", f"attempt {attempt} failed: {reason}: {message}"))
    wait = failed_at + backoff(obs.policy, st.retries) - obs.now
    if wait > 0:
        act.requeue_after = wait
        return Next(
            RunPhase.RESUMING, "Backoff", f"attempt {attempt} failed ({reason}); retrying in {wait:.0f}s"
        )
    st.retries += 1
    act.create_attempt = attempt + 1
    return Next(
        RunPhase.RESUMING, "Retrying", f"attempt {attempt} failed ({reason}); attempt {attempt + 1} resumes"
    )


# -------------------------------------------------------------------------------------- sweep


@dataclass
class SweepAction:
    plan: expand.ChildPlan
    admit: list[str]
    resume: list[str]  # children to annotate with the sweep's resume token
    status: SweepStatus
    events: list[Event] = field(default_factory=list)
    # Set the parent MLflow run to this (then record it in status): only once MLflow took it, so an
    # outage is retried on the next pass.
    tracking_status: TrackingState | None = None
    fit: bool = False  # the sweep succeeded and has no scaling law yet: fit one


def parent_run_status(phase: SweepPhase) -> TrackingState:
    """The state the sweep's parent MLflow run should be in: ended with the sweep, open otherwise."""
    return {SweepPhase.SUCCEEDED: TrackingState.FINISHED, SweepPhase.FAILED: TrackingState.FAILED}.get(
        phase, TrackingState.RUNNING
    )


def name_list(items: list[str], shown: int = 5) -> str:
    """`a, b, c` or `a, b, c, ... (+997 more)`: short enough for an event message."""
    head = ", ".join(items[:shown])
    return head if len(items) <= shown else f"{head}, ... (+{len(items) - shown} more)"


def decide_sweep(
    sweep: dict[str, Any],
    spec: ScalingSweepSpec,
    children: list[dict[str, Any]],
    resume_token: str | None,
    now_iso: str,
) -> SweepAction:
    meta = sweep["metadata"]
    st = parse_status(SweepStatus, sweep.get("status"))
    generation = int(meta.get("generation", 1))
    ordered = points(meta["name"], spec)
    desired = [expand.child_manifest(sweep, sweep["spec"], p) for p in ordered]
    by_name = {c["metadata"]["name"]: c for c in children}
    plan = expand.plan_children(desired, children)
    creating = frozenset(c["metadata"]["name"] for c in plan.create)
    admit = [] if spec.suspend else expand.admit(ordered, by_name, spec.max_parallel_runs, creating)
    resume: list[str] = []
    events: list[Event] = []
    if resume_token and resume_token != st.resume_token:
        st.resume_token = resume_token
        resume = [n for n, c in by_name.items() if (c.get("status") or {}).get("phase") == RunPhase.FAILED]
        events.append(("Normal", "ResumeRequested", f"resuming {len(resume)} failed point(s)"))
    roll = status.rollup(
        ordered, by_name, spec.suspend, st.conditions, generation, now_iso, spec.max_parallel_runs
    )
    if roll.phase != st.phase:
        kind = "Warning" if roll.phase == SweepPhase.FAILED else "Normal"
        events.append((kind, roll.phase, f"{st.phase or 'New'} -> {roll.phase}: {roll.progress} succeeded"))
    # One event per pass, not per point: a 1,000-point sweep posts one, not a thousand.
    if plan.create:
        created = [child["metadata"]["name"] for child in plan.create]
        events.append(
            ("Normal", "PointsCreated", f"{len(created)} TrainingRun(s) created: {name_list(created)}")
        )
    if plan.delete:
        message = (
            f"{len(plan.delete)} TrainingRun(s) removed (no longer on the axes): {name_list(plan.delete)}"
        )
        events.append(("Normal", "PointsRemoved", message))
    st.phase, st.counts, st.progress, st.points = roll.phase, roll.counts, roll.progress, roll.points
    st.conditions = status.set_condition(
        roll.conditions, ConditionType.INVALID, False, "Valid", "", generation, now_iso
    )
    st.eta_seconds, st.eta, st.eta_note = roll.eta.seconds, roll.eta.text, roll.eta.note
    st.observed_generation, st.message = generation, f"{roll.progress} succeeded"
    wanted = parent_run_status(roll.phase)
    return SweepAction(
        plan=plan,
        admit=admit,
        resume=resume,
        status=st,
        events=events,
        tracking_status=wanted if wanted != (st.mlflow_run_status or TrackingState.RUNNING) else None,
        fit=roll.phase == SweepPhase.SUCCEEDED and st.scaling_law is None,
    )


def admitted(obj: dict[str, Any]) -> bool:
    """Standalone runs are admitted at once; a sweep's points wait for the sweep to admit them."""
    meta = obj.get("metadata") or {}
    if names.LABEL_SWEEP not in (meta.get("labels") or {}):
        return True
    return names.ANNOTATION_ADMITTED in (meta.get("annotations") or {})
