"""Status mapping: KubeRay RayJob fields -> our view of an attempt; runs -> sweep roll-up. Pure.

RayJob has no conditions (ray-project/kuberay#5152); its lifecycle is `jobDeploymentStatus`
and the Ray job's own `jobStatus`, with `reason`/`message` on failure (docs/operator.md, "KubeRay status and TrainingRun phases"):

    none, "", New, Initializing, Waiting       -> pending
    Running (jobStatus "", PENDING, RUNNING)   -> running
    Complete + SUCCEEDED                       -> succeeded
    Complete + STOPPED, Failed (any reason)    -> failed (retryable by our failure policy)
    ValidationFailed / reason ValidationFailed -> invalid (a rendering bug: never retried)
    Suspending, Suspended                      -> suspended
    Retrying                                   -> retrying (only if someone set backoffLimit)

Conditions are whole lists keyed by `type` (merge patches replace lists on a real server too);
a condition keeps its `lastTransitionTime` while its status does not change. The status types
themselves (`RunStatus`, `SweepStatus`, `Condition`, the phase enums) are the vocabulary's,
`sphinxx.schema.status`, from which the CRDs' status schemas are generated too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sphinxx.schema.status import (
    Condition,
    PointRow,
    RunPhase,
    RunStatus,
    SweepPhase,
    parse_status,
)
from sphinxx.sweep.points import Point
from sphinxx.sweep.results import row_metrics

RUN_CONDITIONS = ("Ready", "Running", "Resuming", "Suspended", "Succeeded", "Failed")
SWEEP_CONDITIONS = ("Ready", "Progressing", "Complete", "Failed")


@dataclass(frozen=True)
class JobView:
    """What one attempt's RayJob says, in our terms."""

    outcome: str  # none | pending | running | succeeded | failed | invalid | suspended | retrying
    reason: str = ""
    message: str = ""
    cluster: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    workers: dict[str, int] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.outcome in ("succeeded", "failed", "invalid")


def observe_rayjob(rayjob: dict[str, Any] | None) -> JobView:
    if rayjob is None:
        return JobView("none")
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


def _outcome(deployment: str, job: str, reason: str, message: str) -> tuple[str, str, str]:
    """(outcome, reason, message) of a RayJob's deployment status and job status (the table above)."""
    if deployment == "ValidationFailed" or reason == "ValidationFailed":
        return "invalid", "ValidationFailed", message
    if deployment == "Complete" and job == "SUCCEEDED":
        return "succeeded", "Succeeded", message
    if deployment == "Complete":
        return "failed", reason or f"Job{job.title() or 'Ended'}", message or f"Ray job ended {job}"
    if deployment == "Failed":
        return "failed", reason or "Failed", message or f"Ray job {job or 'failed'}"
    if deployment in ("Suspending", "Suspended"):
        return "suspended", deployment, message
    if deployment == "Retrying":
        return "retrying", "Retrying", message
    if deployment == "Running":
        return "running", "Running", message
    return "pending", deployment or "New", message


def set_condition(
    conditions: list[Condition],
    type_: str,
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
        "Ready": phase in (RunPhase.RUNNING, RunPhase.SUCCEEDED),
        "Running": phase == RunPhase.RUNNING,
        "Resuming": phase == RunPhase.RESUMING,
        "Suspended": phase == RunPhase.SUSPENDED,
        "Succeeded": phase == RunPhase.SUCCEEDED,
        "Failed": phase == RunPhase.FAILED,
    }
    for type_, value in truth.items():
        is_phase = value and (type_ == phase or type_ == "Ready")
        conditions = set_condition(
            conditions,
            type_,
            value,
            reason if is_phase else phase,
            message if is_phase else "",
            generation,
            now,
        )
    return conditions


def condition(conditions: list[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or [] if c.type == type_), None)


# ----------------------------------------------------------------------------- sweep roll-up


@dataclass
class Rollup:
    phase: SweepPhase
    counts: dict[str, int]
    progress: str
    points: list[PointRow]
    conditions: list[Condition]


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
    )


def rollup(
    ordered: list[Point],
    children: dict[str, dict[str, Any]],
    suspended: bool,
    conditions: list[Condition],
    generation: int,
    now: str,
) -> Rollup:
    counts = {key: 0 for key in ("total", *(p.value.lower() for p in RunPhase))}
    rows = [point_row(point, children.get(point.name)) for point in ordered]
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
        "Ready": phase != SweepPhase.FAILED,
        "Progressing": phase in (SweepPhase.PENDING, SweepPhase.RUNNING),
        "Complete": phase == SweepPhase.SUCCEEDED,
        "Failed": counts["failed"] > 0,
    }
    for type_, value in truth.items():
        conditions = set_condition(conditions, type_, value, phase, message, generation, now)
    return Rollup(phase, counts, f"{counts['succeeded']}/{counts['total']}", rows, conditions)
