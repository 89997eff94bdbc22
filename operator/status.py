"""Status mapping: KubeRay RayJob fields -> our view of an attempt; runs -> sweep roll-up. Pure.

RayJob has no conditions (ray-project/kuberay#5152); its lifecycle is `jobDeploymentStatus`
and the Ray job's own `jobStatus`, with `reason`/`message` on failure
(docs/operator.md, "KubeRay status and TrainingRun phases"):

    none, "", New, Initializing, Waiting       -> pending
    Running (jobStatus "", PENDING, RUNNING)   -> running
    Complete + SUCCEEDED                       -> succeeded
    Complete + STOPPED, Failed (any reason)    -> failed (retryable by our failure policy)
    ValidationFailed / reason ValidationFailed -> invalid (a rendering bug: never retried)
    Suspending, Suspended                      -> suspended
    Retrying                                   -> retrying (only if someone set backoffLimit)

KubeRay's values are enums here with KubeRay's own strings and predicates (`JobStatus`,
`JobDeploymentStatus`, `JobFailedReason`, after `ray-operator/apis/ray/v1/rayjob_types.go`); a
value this operator does not know (a newer KubeRay) reads as pending, under its own name.

Conditions are whole lists keyed by `type` (merge patches replace lists on a real server too);
a condition keeps its `lastTransitionTime` while its status does not change. The status types
themselves (`RunStatus`, `SweepStatus`, `Condition`, `ConditionType`, the phase enums) are the
vocabulary's, `sphinxx.schema.status`, from which the CRDs' status schemas are generated too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from sphinxx.schema.status import (
    Condition,
    ConditionType,
    PointRow,
    RunPhase,
    RunStatus,
    SweepPhase,
    parse_status,
)
from sphinxx.sweep.points import Point
from sphinxx.sweep.results import row_metrics

from .eta import SweepEta, point_eta, sweep_eta

RUN_CONDITIONS = (
    ConditionType.READY,
    ConditionType.RUNNING,
    ConditionType.RESUMING,
    ConditionType.SUSPENDED,
    ConditionType.SUCCEEDED,
    ConditionType.FAILED,
)
SWEEP_CONDITIONS = (
    ConditionType.READY,
    ConditionType.PROGRESSING,
    ConditionType.COMPLETE,
    ConditionType.FAILED,
)


# ------------------------------------------------------------------ KubeRay's RayJob status values


class JobStatus(enum.StrEnum):
    """`status.jobStatus`: the Ray job's own status, as KubeRay copies it from Ray."""

    NEW = ""  # not submitted yet
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        """KubeRay's IsJobTerminal (Ray's JobStatus.is_terminal): the Ray job has ended."""
        return self in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED)


class JobDeploymentStatus(enum.StrEnum):
    """`status.jobDeploymentStatus`: KubeRay's own state machine (the cluster, the submission)."""

    NEW = ""
    INITIALIZING = "Initializing"
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"
    VALIDATION_FAILED = "ValidationFailed"
    SUSPENDING = "Suspending"
    SUSPENDED = "Suspended"
    RETRYING = "Retrying"
    WAITING = "Waiting"

    @classmethod
    def parse(cls, value: str) -> JobDeploymentStatus | None:
        """The member for a value KubeRay wrote; None for one this operator does not know."""
        try:
            return cls(value)
        except ValueError:
            return None

    @property
    def is_terminal(self) -> bool:
        """KubeRay's IsJobDeploymentTerminal: Complete or Failed (KubeRay leaves ValidationFailed out)."""
        return self in (JobDeploymentStatus.COMPLETE, JobDeploymentStatus.FAILED)

    @property
    def is_suspended(self) -> bool:
        """Suspending or Suspended: KubeRay is taking the cluster down, or has (`spec.suspend`)."""
        return self in (JobDeploymentStatus.SUSPENDING, JobDeploymentStatus.SUSPENDED)


class JobFailedReason(enum.StrEnum):
    """`status.reason`: why KubeRay set a RayJob's deployment status to Failed."""

    SUBMISSION_FAILED = "SubmissionFailed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    PRE_RUNNING_DEADLINE_EXCEEDED = "PreRunningDeadlineExceeded"
    APP_FAILED = "AppFailed"
    TRANSITION_GRACE_PERIOD_EXCEEDED = "JobDeploymentStatusTransitionGracePeriodExceeded"
    JOB_STATUS_CHECK_TIMEOUT_EXCEEDED = "JobStatusCheckTimeoutExceeded"
    VALIDATION_FAILED = "ValidationFailed"


# ------------------------------------------------------------------------- an attempt, our terms


class Outcome(enum.StrEnum):
    """What one attempt's RayJob says, in our terms (the table above). Its value appears in messages."""

    NONE = "none"  # no RayJob: not created yet, or gone
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INVALID = "invalid"
    SUSPENDED = "suspended"
    RETRYING = "retrying"

    @property
    def is_terminal(self) -> bool:
        """The attempt has ended: succeeded, failed, or refused by KubeRay."""
        return self in (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.INVALID)

    @property
    def is_starting(self) -> bool:
        """On its way up: pending, or retrying under KubeRay's own backoffLimit."""
        return self in (Outcome.PENDING, Outcome.RETRYING)

    @property
    def is_live(self) -> bool:
        """Starting or running: an attempt that can still write checkpoints."""
        return self.is_starting or self == Outcome.RUNNING

    @property
    def is_unfinished(self) -> bool:
        """A RayJob that has not ended: live, or suspended."""
        return self.is_live or self == Outcome.SUSPENDED


@dataclass(frozen=True)
class JobView:
    """What one attempt's RayJob says, in our terms."""

    outcome: Outcome
    reason: str = ""
    message: str = ""
    cluster: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    workers: dict[str, int] = field(default_factory=dict)


def observe_rayjob(rayjob: dict[str, Any] | None) -> JobView:
    if rayjob is None:
        return JobView(Outcome.NONE)
    st = rayjob.get("status") or {}
    deployment, job = st.get("jobDeploymentStatus") or "", st.get("jobStatus") or ""
    reason, message = st.get("reason") or "", st.get("message") or ""
    cluster_status = st.get("rayClusterStatus") or {}
    workers = {
        key: int(cluster_status[src])
        for key, src in (
            ("desired", "desiredWorkerReplicas"),
            ("available", "availableWorkerReplicas"),
            ("ready", "readyWorkerReplicas"),
        )
        if cluster_status.get(src) is not None
    }
    outcome, why, text = _outcome(deployment, job, reason, message)
    return JobView(
        outcome, why, text, st.get("rayClusterName") or None, st.get("startTime"), st.get("endTime"), workers
    )


def _outcome(deployment: str, job: str, reason: str, message: str) -> tuple[Outcome, str, str]:
    """(outcome, reason, message) of a RayJob's deployment status and job status (the table above).

    `job` and `reason` stay KubeRay's strings (compared with members), so one this operator does
    not know still reaches the messages; `deployment` is parsed, an unknown one reads as pending.
    """
    known = JobDeploymentStatus.parse(deployment)
    if known == JobDeploymentStatus.VALIDATION_FAILED or reason == JobFailedReason.VALIDATION_FAILED:
        return Outcome.INVALID, JobFailedReason.VALIDATION_FAILED.value, message
    if known == JobDeploymentStatus.COMPLETE and job == JobStatus.SUCCEEDED:
        return Outcome.SUCCEEDED, "Succeeded", message
    if known == JobDeploymentStatus.COMPLETE:
        return Outcome.FAILED, reason or f"Job{job.title() or 'Ended'}", message or f"Ray job ended {job}"
    if known == JobDeploymentStatus.FAILED:
        return Outcome.FAILED, reason or "Failed", message or f"Ray job {job or 'failed'}"
    if known is not None and known.is_suspended:
        return Outcome.SUSPENDED, deployment, message
    if known == JobDeploymentStatus.RETRYING:
        return Outcome.RETRYING, "Retrying", message
    if known == JobDeploymentStatus.RUNNING:
        return Outcome.RUNNING, "Running", message
    return Outcome.PENDING, deployment or "New", message


def set_condition(
    conditions: list[Condition],
    type_: ConditionType,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[Condition]:
    """A new list with `type_` set; the transition time moves only when the status changes."""
    value = "True" if status else "False"
    old = condition(conditions, type_)
    new = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=old.last_transition_time if old and old.status == value else now,
        observed_generation=generation,
    )
    return sorted([*(c for c in conditions if c.type != type_), new], key=lambda c: c.type)


def run_conditions(
    conditions: list[Condition], phase: RunPhase, reason: str, message: str, generation: int, now: str
) -> list[Condition]:
    """The phase-derived conditions of a TrainingRun, all consistent with `phase`."""
    truth = {
        ConditionType.READY: phase in (RunPhase.RUNNING, RunPhase.SUCCEEDED),
        ConditionType.RUNNING: phase == RunPhase.RUNNING,
        ConditionType.RESUMING: phase == RunPhase.RESUMING,
        ConditionType.SUSPENDED: phase == RunPhase.SUSPENDED,
        ConditionType.SUCCEEDED: phase == RunPhase.SUCCEEDED,
        ConditionType.FAILED: phase == RunPhase.FAILED,
    }
    for type_, value in truth.items():
        # A true condition is Ready or the phase's own: it carries the phase's reason and message.
        conditions = set_condition(
            conditions,
            type_,
            value,
            reason if value else phase,
            message if value else "",
            generation,
            now,
        )
    return conditions


def condition(conditions: list[Condition] | None, type_: ConditionType) -> Condition | None:
    return next((c for c in conditions or [] if c.type == type_), None)


# ----------------------------------------------------------------------------- sweep roll-up


@dataclass
class Rollup:
    phase: SweepPhase
    counts: dict[str, int]
    progress: str
    points: list[PointRow]
    conditions: list[Condition]
    eta: SweepEta


_ROWS: dict[tuple[Point, str, str], PointRow] = {}
_ROWS_MAX = 50_000


def point_row(point: Point, child: dict[str, Any] | None) -> PointRow:
    """One point's row, from its TrainingRun's status (whose metrics come from its newest checkpoint).

    Memoised by the child's uid and resourceVersion (same version, same status, same row): a
    roll-up of a thousand points then parses only the statuses that changed since the last pass.
    """
    meta = (child or {}).get("metadata") or {}
    key = (point, meta.get("uid", ""), meta.get("resourceVersion", ""))
    if not key[1] or not key[2]:
        return _point_row(point, child)
    row = _ROWS.get(key)
    if row is None:
        if len(_ROWS) >= _ROWS_MAX:
            _ROWS.clear()
        row = _ROWS[key] = _point_row(point, child)
    return row


def _point_row(point: Point, child: dict[str, Any] | None) -> PointRow:
    st = parse_status(RunStatus, (child or {}).get("status"))
    checkpoint = st.last_checkpoint
    return PointRow(
        name=point.name,
        model=point.model,
        data_fraction=point.fraction,
        phase=st.phase or RunPhase.QUEUED,
        attempt=st.attempt,
        step=checkpoint.step if checkpoint else None,
        checkpoint=(checkpoint.uri or None) if checkpoint else None,
        **row_metrics(st.metrics),
        benchmarks=dict(st.benchmarks) or None,
    )


def rollup(
    ordered: list[Point],
    children: dict[str, dict[str, Any]],
    suspended: bool,
    conditions: list[Condition],
    generation: int,
    now: str,
    slots: int = 0,
) -> Rollup:
    """Counts, rows, phase and conditions of a sweep from its points; the ETA on `slots` (eta.py)."""
    counts = {key: 0 for key in ("total", *(p.value.lower() for p in RunPhase))}
    rows = [point_row(point, children.get(point.name)) for point in ordered]
    etas = [
        point_eta(row.model, row.data_fraction, row.phase, _progress(children.get(row.name))) for row in rows
    ]
    for row in rows:
        counts["total"] += 1
        counts[row.phase.value.lower()] += 1
    done = counts["succeeded"] + counts["failed"]
    if suspended:
        phase = SweepPhase.SUSPENDED
    elif counts["total"] and done == counts["total"]:
        phase = SweepPhase.FAILED if counts["failed"] else SweepPhase.SUCCEEDED
    elif counts["running"] + counts["resuming"] + done:
        phase = SweepPhase.RUNNING
    else:
        phase = SweepPhase.PENDING
    message = f"{counts['succeeded']}/{counts['total']} succeeded, {counts['failed']} failed"
    truth = {
        ConditionType.READY: phase != SweepPhase.FAILED,
        ConditionType.PROGRESSING: phase in (SweepPhase.PENDING, SweepPhase.RUNNING),
        ConditionType.COMPLETE: phase == SweepPhase.SUCCEEDED,
        ConditionType.FAILED: counts["failed"] > 0,
    }
    for type_, value in truth.items():
        conditions = set_condition(conditions, type_, value, phase, message, generation, now)
    progress = f"{counts['succeeded']}/{counts['total']}"
    return Rollup(phase, counts, progress, rows, conditions, sweep_eta(etas, slots, suspended))


def _progress(child: dict[str, Any] | None) -> dict[str, Any] | None:
    progress = ((child or {}).get("status") or {}).get("progress")
    return progress if isinstance(progress, dict) else None
