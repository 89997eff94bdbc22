"""Status mapping: KubeRay RayJob fields -> our view of an attempt; runs -> sweep roll-up. Pure.

RayJob has no conditions (ray-project/kuberay#5152); its lifecycle is `jobDeploymentStatus`
and the Ray job's own `jobStatus`, with `reason`/`message` on failure (orchestration.md 1.2):

    none, "", New, Initializing, Waiting       -> pending
    Running (jobStatus "", PENDING, RUNNING)   -> running
    Complete + SUCCEEDED                       -> succeeded
    Complete + STOPPED, Failed (any reason)    -> failed (retryable by our failure policy)
    ValidationFailed / reason ValidationFailed -> invalid (a rendering bug: never retried)
    Suspending, Suspended                      -> suspended
    Retrying                                   -> retrying (only if someone set backoffLimit)

Conditions are whole lists keyed by `type` (merge patches replace lists on a real server too);
a condition keeps its `lastTransitionTime` while its status does not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sphinxx.jobs.schema.flavors import FLAVORS
from sphinxx.jobs.sweep.points import Point

if TYPE_CHECKING:  # numpy/scipy stay out of the import path of a status mapping
    from sphinxx.jobs.sweep.scaling_law import ScalingFit

RUN_PHASES = ("Pending", "Running", "Resuming", "Succeeded", "Failed", "Suspended")
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
    common = {
        "cluster": st.get("rayClusterName") or None,
        "start_time": st.get("startTime"),
        "end_time": st.get("endTime"),
        "workers": workers,
    }
    if deployment == "ValidationFailed" or reason == "ValidationFailed":
        return JobView("invalid", "ValidationFailed", message, **common)
    if deployment == "Complete" and job == "SUCCEEDED":
        return JobView("succeeded", "Succeeded", message, **common)
    if deployment == "Complete":
        return JobView(
            "failed", reason or f"Job{job.title() or 'Ended'}", message or f"Ray job ended {job}", **common
        )
    if deployment == "Failed":
        return JobView("failed", reason or "Failed", message or f"Ray job {job or 'failed'}", **common)
    if deployment in ("Suspending", "Suspended"):
        return JobView("suspended", deployment, message, **common)
    if deployment == "Retrying":
        return JobView("retrying", "Retrying", message, **common)
    if deployment == "Running":
        return JobView("running", "Running", message, **common)
    return JobView("pending", deployment or "New", message, **common)


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """A new list with `type_` set; the transition time moves only when the status changes."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == type_), None)
    new = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": old["lastTransitionTime"] if old and old.get("status") == value else now,
        "observedGeneration": generation,
    }
    out = [c for c in conditions if c.get("type") != type_]
    return sorted([*out, new], key=lambda c: c["type"])


def run_conditions(
    conditions: list[dict[str, Any]], phase: str, reason: str, message: str, generation: int, now: str
) -> list[dict[str, Any]]:
    """The phase-derived conditions of a TrainingRun, all consistent with `phase`."""
    truth = {
        "Ready": phase in ("Running", "Succeeded"),
        "Running": phase == "Running",
        "Resuming": phase == "Resuming",
        "Suspended": phase == "Suspended",
        "Succeeded": phase == "Succeeded",
        "Failed": phase == "Failed",
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


def condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


# ----------------------------------------------------------------------------- sweep roll-up


@dataclass
class Rollup:
    phase: str
    counts: dict[str, int]
    progress: str
    points: list[dict[str, Any]]
    conditions: list[dict[str, Any]]
    scaling_points: list[tuple[float, float, float]]  # (params, fraction, loss) of succeeded points


def rollup(
    ordered: list[Point],
    children: dict[str, dict[str, Any]],
    suspended: bool,
    conditions: list[dict[str, Any]],
    generation: int,
    now: str,
) -> Rollup:
    counts = {
        key: 0 for key in ("total", "pending", "running", "resuming", "succeeded", "failed", "suspended")
    }
    rows, scaling = [], []
    for point in ordered:
        st = (children.get(point.name) or {}).get("status") or {}
        phase = st.get("phase") or "Pending"
        counts["total"] += 1
        counts[phase.lower()] = counts.get(phase.lower(), 0) + 1
        checkpoint = st.get("lastCheckpoint") or {}
        loss = (st.get("metrics") or {}).get("loss")
        rows.append(
            {
                "name": point.name,
                "model": point.model,
                "dataFraction": point.fraction,
                "phase": phase,
                "attempt": st.get("attempt", 0),
                "step": checkpoint.get("step"),
                "loss": loss,
                "checkpoint": checkpoint.get("uri"),
            }
        )
        if phase == "Succeeded" and loss is not None:
            scaling.append((float(FLAVORS[point.model].params), point.fraction, float(loss)))
    done = counts["succeeded"] + counts["failed"]
    if suspended:
        phase = "Suspended"
    elif counts["total"] and done == counts["total"]:
        phase = "Failed" if counts["failed"] else "Succeeded"
    elif counts["running"] + counts["resuming"] + counts["succeeded"] + counts["failed"]:
        phase = "Running"
    else:
        phase = "Pending"
    message = f"{counts['succeeded']}/{counts['total']} succeeded, {counts['failed']} failed"
    truth = {
        "Ready": phase != "Failed",
        "Progressing": phase in ("Pending", "Running"),
        "Complete": phase == "Succeeded",
        "Failed": counts["failed"] > 0,
    }
    for type_, value in truth.items():
        conditions = set_condition(conditions, type_, value, phase, message, generation, now)
    return Rollup(phase, counts, f"{counts['succeeded']}/{counts['total']}", rows, conditions, scaling)


def scaling_law_status(fit: ScalingFit) -> dict[str, Any]:
    """A fitted scaling law as the sweep's `status.scalingLaw`: the numbers, not only the prose.

    N is the model's nominal parameter count, D the point's data fraction (every point of a
    sweep sees the same mixture, so the fraction is proportional to the tokens it saw).
    Non-finite numbers are left out: they are not valid JSON for the API server.
    """
    out: dict[str, Any] = {
        "form": fit.form,
        "summary": fit.summary(),
        "numPoints": fit.num_points,
        "paramsAxis": "nominal parameters",
        "dataAxis": "data fraction",
    }
    if fit.form == "chinchilla":
        out["coefficients"] = _finite({key: getattr(fit, key) for key in ("E", "A", "alpha", "B", "beta")})
        out |= _finite({"residualRms": fit.residual_rms})
    out["perAxis"] = [
        {
            "axis": law.axis,
            "numPoints": law.num_points,
            **_finite({"coefficient": law.coefficient, "slope": law.slope}),
        }
        for law in fit.per_axis
    ]
    if fit.note:
        out["note"] = fit.note
    return out


def _finite(values: dict[str, float | None]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}
