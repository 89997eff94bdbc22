"""Status of the custom resources: phases, conditions and typed rows.

The operator computes these (`sphinxx.operator.decide`) and writes them as camelCase JSON; the
CRDs' status schemas are generated from the same classes; the local runner reports its points in
the same phases. `parse_status` reads what the API server holds (ignoring fields an older or
newer operator wrote) and `dump_status` writes it back, dropping unset fields.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, TypeVar

from .fields import Naming, count, dump, field, parse

T = TypeVar("T")


class RunPhase(enum.StrEnum):
    QUEUED = "Queued"  # a sweep's point waiting for a slot under maxParallelRuns: nothing exists for it yet
    PENDING = "Pending"
    RUNNING = "Running"
    RESUMING = "Resuming"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class SweepPhase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class TrackingState(enum.StrEnum):
    """An MLflow run's status, as the owner of the run sets it."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


class ConditionType(enum.StrEnum):
    """The `type` of a status condition, by which conditions are keyed
    (docs/architecture.md, "Custom resources").

    `Condition.type` stays a string field, so a condition some other writer added still parses (and
    the CRDs do not change); every condition this operator writes has one of these types.
    """

    READY = "Ready"  # run: Running or Succeeded; sweep: not Failed; False while the spec is Invalid
    RUNNING = "Running"  # Running .. Failed: a run's phase-derived conditions
    RESUMING = "Resuming"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"  # on a sweep: some point failed
    PROGRESSING = "Progressing"  # sweep: Pending or Running
    COMPLETE = "Complete"  # sweep: every point succeeded
    INVALID = "Invalid"  # the spec was refused by admission
    BLOCKED = "Blocked"  # run: the pre-flight check found an input unreadable (before the first attempt)
    TRACKING_READY = "TrackingReady"  # the MLflow run exists; False while MLflow is unreachable
    PREEMPTED = "Preempted"  # run: preempted at least once (count in status.preemptions, own bound)
    PROGRESS_REPORTED = "ProgressReported"  # run: the job's progress record was read and used (progress.py)


TERMINAL_RUN_PHASES = (RunPhase.SUCCEEDED, RunPhase.FAILED)
CONDITION_STATUSES = ("True", "False", "Unknown")


@dataclass
class Condition:
    type: str = field("", "condition type (Ready, Running, Invalid, ...)")  # ConditionType, when we wrote it
    status: str = field("Unknown", "True, False or Unknown", enum=CONDITION_STATUSES)
    reason: str = field("", "one CamelCase word")
    message: str = field("", "what a user needs to know")
    last_transition_time: str | None = field(None, "when status last changed (RFC 3339)")
    observed_generation: int | None = count(
        None, "the spec generation this condition reflects", maximum=2**62
    )


@dataclass
class CheckpointRef:
    step: int = count(0, "optimizer step of the committed checkpoint", maximum=2**62)
    uri: str = field("", "URI of the checkpoint folder")


@dataclass
class RollbackStatus:
    """The last rollback of a run (`kubectl sphinxx rollback`):
    commits newer than to_step stopped counting."""

    request: str = field("", "the sphinxx.dev/rollback value it carried out")
    to_step: int = count(0, "the committed step the run resumes from", maximum=2**62)
    rolled_back_steps: list[int] = field([], "commits marked rolled back "
                                             "(kept on S3, no longer resumed from)",
                                         max_items=100_000)  # fmt: skip
    after_attempt: int = count(0, "the attempt that ran last before the rollback; "
                                  "later attempts resume from to_step",
                               maximum=2**31)  # fmt: skip
    time: str | None = field(None, "when the operator rolled back (RFC 3339); MLflow metrics of later steps "
                             "logged before it are superseded")  # fmt: skip


@dataclass
class RunProgress:
    """Where a run is between checkpoints, from its job's progress record (sphinxx.schema.progress).

    `step` and `loss` are never behind the newest committed checkpoint; the rates and the ETA come
    from the record only and are left out once the run is not Running.
    """

    step: int = count(0, "optimizer steps done (the record's, or the newest checkpoint's if later)",
                      maximum=2**62)  # fmt: skip
    total_steps: int | None = count(None, "optimizer steps of the run", maximum=2**62)
    loss: float | None = field(None, "training loss at that step")
    tokens_per_second: float | None = field(None, "tokens per second over the recent steps")
    mfu: float | None = field(None, "model FLOPs utilisation over the recent steps (0..1)")
    seconds_per_step: float | None = field(None, "wall seconds per step over the recent steps")
    eta_seconds: int | None = count(None, "seconds to the last step at the recent rate", maximum=2**62)
    eta: str | None = field(None, "the same as H:MM:SS")
    attempt: int | None = count(None, "the attempt that reported it", maximum=2**31)
    updated_at: str | None = field(None, "when the job wrote the record it comes from (RFC 3339)")


@dataclass
class BenchmarkScore:
    """One benchmark of `eval.benchmarks` as the newest committed checkpoint records it."""

    score: float = field(0.0, "the headline: a fraction in [0, 1], or the benchmark's own scale "
                              "(MME's perception, 0..2000)")  # fmt: skip
    metric: str = field("", "how the answers were scored (docs/evaluation.md, Metrics)")
    samples: int = count(0, "records scored", maximum=2**62)
    step: int = count(0, "the step the model was scored at", maximum=2**62)
    tokens: int = count(0, "training tokens seen at that step", maximum=2**62)
    details: dict[str, float] = field({}, "every number the benchmark publishes, as published (percent)")


@dataclass
class RunStatus:
    phase: RunPhase | None = field(None, "where the run is")
    attempt: int = count(0, "attempt number (one RayJob each)", maximum=2**31)
    retries: int = count(0, "automatic retries used since the last manual resume", maximum=2**31)
    run_id: str | None = field(None, "stable run id: Ray run name and checkpoint folder")
    model: str | None = field(None, "model flavor")
    data_fraction: float | None = field(None, "data fraction")
    ray_job_name: str | None = field(None, "RayJob of the current attempt")
    ray_cluster_name: str | None = field(None, "RayCluster of the current attempt")
    mlflow_run_id: str | None = field(None, "MLflow run of this TrainingRun (the same for every attempt)")
    config_uri: str | None = field(None, "the resolved run config the job reads")
    storage_uri: str | None = field(
        None, "checkpoint prefix, pinned at the first attempt (it may be the operator's default)"
    )
    last_checkpoint: CheckpointRef | None = field(None, "the newest committed checkpoint")
    metrics: dict[str, float] = field({}, "metrics of the newest committed checkpoint")
    benchmarks: dict[str, BenchmarkScore] = field(
        {}, "benchmark scores the newest committed checkpoint records (eval.benchmarks)"
    )
    progress: RunProgress | None = field(
        None, "live progress between checkpoints (the job's progress record)"
    )
    workers: dict[str, int] = field({}, "elastic bounds and the worker counts KubeRay reports")
    resume_token: str | None = field(None, "the last sphinxx.dev/resume annotation acted on")
    rollback_token: str | None = field(None, "the last sphinxx.dev/rollback annotation acted on")
    last_rollback: RollbackStatus | None = field(None, "the last rollback (kubectl sphinxx rollback)")
    last_failure_time: str | None = field(None, "when the current attempt was seen failed")
    preemptions: int = count(0, "times the run was preempted and resumed from the step it committed "
                                "(bounded by config.parallel.max_preemptions, not by retries)",
                             maximum=2**31)  # fmt: skip
    resizes: int = count(0, "times the worker group committed and restarted bigger", maximum=2**31)
    message: str = field("", "what is happening, in one line")
    observed_generation: int | None = count(None, "the spec generation this status reflects", maximum=2**62)
    conditions: list[Condition] = field(
        [], "Ready, Running, Resuming, Suspended, Succeeded, Failed, Invalid, ..."
    )


@dataclass
class PointRow:
    """One point of a sweep, as the sweep's status lists it."""

    name: str = field("", "the TrainingRun")
    model: str = field("", "model flavor")
    data_fraction: float = field(0.0, "data fraction")
    phase: RunPhase = field(RunPhase.PENDING, "the point's phase")
    attempt: int = count(0, "its attempt", maximum=2**31)
    step: int | None = count(None, "its newest committed step", maximum=2**62)
    loss: float | None = field(None, "loss at that checkpoint")
    tokens: float | None = field(None, "training tokens consumed at that checkpoint")
    params: float | None = field(None, "N of the scaling law (active, non-embedding parameters)")
    heldout: dict[str, float] | None = field(None, "held-out bits per byte at that checkpoint: "
                                                   "heldout_bpb (all domains) "
                                                   "and heldout_bpb/<domain>")  # fmt: skip
    benchmarks: dict[str, BenchmarkScore] | None = field(None, "benchmark scores at that checkpoint, "
                                                               "by task name")  # fmt: skip
    checkpoint: str | None = field(None, "URI of that checkpoint")


@dataclass
class Coefficients:
    E: float | None = field(None, "irreducible loss")
    A: float | None = field(None, "size term coefficient")
    alpha: float | None = field(None, "size exponent")
    B: float | None = field(None, "data term coefficient")
    beta: float | None = field(None, "data exponent")


@dataclass
class AxisLaw:
    axis: str = field("params", "params or data", enum=("params", "data"))
    coefficient: float | None = field(None, "k in L = k * x^-slope")
    slope: float | None = field(None, "the power")
    num_points: int = count(0, "points on that slice", maximum=2**31)


@dataclass
class Estimate:
    """One coefficient of the law with its bootstrap percentile interval."""

    name: str = field(
        "", "E, A, alpha, B, beta, G, a, b (chinchilla); params_/data_ coefficient, slope (per-axis)"
    )
    value: float | None = field(None, "the fitted value")
    low: float | None = field(None, "lower end of the interval")
    high: float | None = field(None, "upper end of the interval")


@dataclass
class Uncertainty:
    """How the intervals were made: percentile bootstrap over the points."""

    level: float = field(0.9, "central probability of each interval (0.9: 5th to 95th percentile)")
    resamples: int = count(
        0, "bootstrap resamples drawn (points with replacement, law refitted)", maximum=100_000
    )
    used: int = count(0, "resamples that could be refitted (enough distinct N and D)", maximum=100_000)
    seed: int = count(0, "the resampling seed", maximum=2**31)


@dataclass
class LeaveOneOut:
    """Prediction error of the law on points it was not fitted on: refit without each point, predict it."""

    rmse: float | None = field(None, "RMS of observed minus predicted loss, in loss units")
    max_abs: float | None = field(None, "largest absolute error, in loss units")
    num_points: int = count(
        0, "points that could be predicted (a per-axis line needs two others)", maximum=2**31
    )


@dataclass
class ComputeOptimal:
    """Chinchilla form: N_opt(C) = G (C/6)^a and D_opt(C) = (C/6)/N_opt for compute C = 6 N D."""

    G: float | None = field(None, "(alpha A / (beta B))^(1/(alpha+beta))")
    a: float | None = field(None, "beta/(alpha+beta): N_opt grows as C^a")
    b: float | None = field(None, "alpha/(alpha+beta): D_opt grows as C^b")


@dataclass
class PointFit:
    """One point against the law."""

    name: str = field("", "the point (TrainingRun)")
    axis: str = field("", "per-axis form: the law that predicts it (params or data); empty for chinchilla")
    observed: float | None = field(None, "its loss")
    predicted: float | None = field(None, "the law's prediction")
    residual: float | None = field(None, "observed minus predicted")
    loo_error: float | None = field(None, "observed minus the prediction of the law refitted without it")


@dataclass
class DomainLaw:
    """The same points' law on one held-out domain (L = heldout_bpb/<domain>)."""

    domain: str = field("", "language, vision, vision-language, ocr, set-of-mark, ...")
    loss_key: str = field("", "the checkpoint metric fitted")
    form: str | None = field(None, "chinchilla or per-axis", enum=("chinchilla", "per-axis"))
    summary: str = field("", "the law in one line")
    num_points: int = count(0, "points fitted", maximum=2**31)
    coefficients: Coefficients | None = field(None, "chinchilla form")
    per_axis: list[AxisLaw] = field([], "per-axis form")
    estimates: list[Estimate] = field([], "every coefficient with its bootstrap interval")
    residual_rms: float | None = field(None, "RMS of the fit's log-space residuals")
    loo: LeaveOneOut | None = field(None, "leave-one-out prediction error")


@dataclass
class BandPoint:
    """The trend and its bootstrap band at one compute value."""

    compute: float | None = field(None, "C = 6 N D")
    predicted: float | None = field(None, "the trend's score")
    low: float | None = field(None, "lower end of the band")
    high: float | None = field(None, "upper end of the band")


@dataclass
class BenchmarkTrend:
    """One benchmark's score against compute C = 6 N D: a logistic in log10 C (sphinxx.sweep.ability_law)."""

    benchmark: str = field("", "the task name the job committed")
    metric: str = field("", "its metric")
    form: str | None = field(
        None, "the fitted form; unset when no trend was fitted", enum=("logistic-log-compute",)
    )
    summary: str = field("", "the trend in one line")
    num_points: int = count(0, "points with a score on this benchmark", maximum=2**31)
    low: float | None = field(None, "the metric's range (lower end): floor and ceiling stay inside")
    high: float | None = field(None, "the metric's range (upper end)")
    estimates: list[Estimate] = field([], "floor, ceiling, midpoint (log10 C), slope (per decade), "
                                          "each with its bootstrap interval")  # fmt: skip
    residual_rms: float | None = field(None, "RMS of observed minus fitted score")
    uncertainty: Uncertainty | None = field(None, "how the intervals and the band were made")
    residuals: list[PointFit] = field([], "each point: observed and fitted score", max_items=10_000)
    band: list[BandPoint] = field([], "the trend and its band over the points' compute range", max_items=1000)
    note: str = field("", "points left out (no score on this benchmark)")
    reason: str = field("", "why no trend was fitted: too few points, or scores that do not vary")


@dataclass
class ScalingLawStatus:
    """The scaling law fitted when the sweep succeeded (sphinxx.sweep.scaling_law)."""

    form: str | None = field(None, "chinchilla or per-axis", enum=("chinchilla", "per-axis"))
    summary: str = field("", "the law in one line")
    num_points: int = count(0, "points fitted", maximum=2**31)
    params_axis: str = field("", "what N is")
    data_axis: str = field("", "what D is")
    loss_key: str = field(
        "", "the checkpoint metric fitted as L: heldout_bpb when every point has it, else loss"
    )
    loss_axis: str = field("", "what L is")
    coefficients: Coefficients | None = field(None, "chinchilla form: L(N, D) = E + A / N^alpha + B / D^beta")
    compute_optimal: ComputeOptimal | None = field(None, "chinchilla form: the compute-optimal allocation")
    residual_rms: float | None = field(None, "RMS of the fit's log-space residuals")
    per_axis: list[AxisLaw] = field([], "per-axis form: L = coefficient * x^-slope on each axis")
    estimates: list[Estimate] = field([], "every coefficient with its bootstrap interval")
    uncertainty: Uncertainty | None = field(None, "how the intervals were made")
    loo: LeaveOneOut | None = field(None, "leave-one-out prediction error")
    residuals: list[PointFit] = field(
        [], "each fitted point: residual and leave-one-out error", max_items=10_000
    )
    domains: list[DomainLaw] = field([], "per held-out domain, where every point has heldout_bpb/<domain>")
    benchmarks: list[BenchmarkTrend] = field([], "per benchmark: its score against compute C = 6 N D")
    note: str = field("", "why the simpler form was fitted")
    error: str = field("", "why no law could be fitted")


@dataclass
class SweepStatus:
    phase: SweepPhase | None = field(None, "where the sweep is")
    progress: str = field("", "succeeded/total")
    counts: dict[str, int] = field({}, "points by phase, and total")
    points: list[PointRow] = field([], "one row per point, smallest first")
    eta_seconds: int | None = count(None, "estimated seconds until every point has finished", maximum=2**62)
    eta: str | None = field(None, "the same as H:MM:SS; a trailing + when some points have no estimate yet")
    eta_note: str = field("", "how the ETA was estimated, and what it leaves out")
    mlflow_run_id: str | None = field(None, "the sweep's parent MLflow run")
    mlflow_run_status: TrackingState | None = field(
        None, "what the operator last set the parent MLflow run to (it ends with the sweep)"
    )
    scaling_law: ScalingLawStatus | None = field(None, "the fitted scaling law, once the sweep succeeded")
    resume_token: str | None = field(None, "the last sphinxx.dev/resume annotation acted on")
    message: str = field("", "what is happening, in one line")
    observed_generation: int | None = count(None, "the spec generation this status reflects", maximum=2**62)
    conditions: list[Condition] = field([], "Ready, Progressing, Complete, Failed, Invalid, ...")


def parse_status(cls: type[T], data: Any) -> T:
    """A status object from what the server holds; fields this operator does not know are ignored."""
    known = {Naming.CAMEL.key(f.name) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    clean = {k: v for k, v in (data or {}).items() if k in known}
    return parse(cls, clean, "status", Naming.CAMEL)


def dump_status(status: Any) -> dict[str, Any]:
    """camelCase JSON of a status object, unset (None) fields left out."""
    out: dict[str, Any] = dump(status, Naming.CAMEL, drop_none=True)
    return out
