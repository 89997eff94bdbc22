"""A sweep's results: what each point measured, and the scaling law fitted to them.

One definition of the fit's inputs, the same for the operator (which reads them from each
TrainingRun's status, copied from its newest committed checkpoint) and the local runner (which
reads the checkpoint itself):

- N = `num_params`: the parameters a token passes through, without the token embedding and the
  output head (for MoE, top_k of num_experts experts), as the job counted them on the model it
  trained (so `model.overrides` are counted too);
- D = `tokens_seen`: the training tokens the point consumed, from the job's counters;
- L = `heldout_bpb` (held-out bits per byte) when every point has it, else `loss` (the training
  loss at that checkpoint); the fit says which (`loss_key`). Where every point also has
  `heldout_bpb/<domain>`, each such domain gets a law of its own.

All of them are metrics of the checkpoint manifest, written by the job at every commit. A point
without them (a checkpoint from an older job) is left out of the fit, and the fit says so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sphinxx.schema.status import (
    AxisLaw,
    Coefficients,
    ComputeOptimal,
    DomainLaw,
    Estimate,
    LeaveOneOut,
    PointFit,
    PointRow,
    RunPhase,
    ScalingLawStatus,
    Uncertainty,
)

from .abilities import fit_abilities, trend_metrics

if TYPE_CHECKING:  # numpy and scipy stay out of the import path until a fit is made
    from .scaling_law import Point, ScalingFit

PARAMS_KEY, TOKENS_KEY, LOSS_KEY = "num_params", "tokens_seen", "loss"
HELDOUT_KEY = "heldout_bpb"  # held-out bits per byte over every domain; heldout_bpb/<domain> per domain
DOMAINS = ("language", "vision", "vision-language", "ocr", "set-of-mark")  # the order plots and status use
PARAMS_AXIS = "N: active non-embedding parameters (num_params)"
DATA_AXIS = "D: training tokens consumed (tokens_seen)"
LOSS_AXES = {
    LOSS_KEY: "L: training loss at the final checkpoint (loss)",
    HELDOUT_KEY: "L: held-out bits per byte at the final checkpoint (heldout_bpb)",
}
DOMAIN_RESAMPLES = 100  # bootstrap refits of each per-domain law (the main law gets scaling_law.RESAMPLES)


@dataclass(frozen=True)
class FitInput:
    """One succeeded point, as the fit sees it."""

    name: str
    model: str
    fraction: float
    params: float  # N
    tokens: float  # D
    loss: float  # training loss
    heldout: Mapping[str, float] = dataclasses.field(
        default_factory=dict
    )  # heldout_bpb and heldout_bpb/<domain>

    def value(self, key: str) -> float | None:
        """The metric `key` of this point (loss, heldout_bpb or heldout_bpb/<domain>), None if it lacks it."""
        return self.loss if key == LOSS_KEY else self.heldout.get(key)


def _is_heldout(key: str) -> bool:
    """Overall and per-domain held-out bits per byte; not the per-source `heldout_bpb/source:<name>`
    the job also commits (docs/training.md, "Held-out evaluation"): the fit is per domain."""
    return key == HELDOUT_KEY or (key.startswith(HELDOUT_KEY + "/") and "/source:" not in key)


def row_metrics(metrics: Mapping[str, float]) -> dict[str, Any]:
    """The fit metrics of a checkpoint's manifest (None where missing or not finite), as PointRow fields."""

    def get(key: str) -> float | None:
        value = metrics.get(key)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    heldout = {k: v for k in sorted(metrics) if _is_heldout(k) and (v := get(k)) is not None}
    return {
        "params": get(PARAMS_KEY),
        "tokens": get(TOKENS_KEY),
        "loss": get(LOSS_KEY),
        "heldout": heldout or None,
    }


def fit_inputs(rows: Sequence[PointRow]) -> tuple[list[FitInput], list[str]]:
    """(inputs of the succeeded points that carry N, D and L; names of succeeded points that do not)."""
    inputs, missing = [], []
    for row in rows:
        if row.phase != RunPhase.SUCCEEDED:
            continue
        if row.params and row.tokens and row.loss is not None:
            inputs.append(
                FitInput(
                    row.name,
                    row.model,
                    row.data_fraction,
                    row.params,
                    row.tokens,
                    row.loss,
                    dict(row.heldout or {}),
                )
            )
        else:
            missing.append(row.name)
    return inputs, missing


def choose_loss_key(inputs: Sequence[FitInput], requested: str | None = None) -> str:
    """Which metric is L: `requested` if given, else heldout_bpb when every point has it,
    else training loss."""
    if requested:
        return requested
    return HELDOUT_KEY if inputs and all(i.value(HELDOUT_KEY) is not None for i in inputs) else LOSS_KEY


def domain_keys(inputs: Sequence[FitInput]) -> list[str]:
    """The heldout_bpb/<domain> keys every point has: known domains first, in DOMAINS order, then the rest."""
    if not inputs:
        return []
    shared = set.intersection(*({k for k in i.heldout if k.startswith(HELDOUT_KEY + "/")} for i in inputs))
    rank = {f"{HELDOUT_KEY}/{d}": n for n, d in enumerate(DOMAINS)}
    return sorted(shared, key=lambda k: (rank.get(k, len(rank)), k))


def fit_sweep(
    rows: Sequence[PointRow], loss_key: str | None = None, resamples: int | None = None
) -> tuple[ScalingLawStatus, ScalingFit | None, list[FitInput]]:
    """Fit the scaling law to a sweep's rows: (its status form, the fit itself or None, its inputs).

    L is `loss_key` (default: `choose_loss_key`); a law per held-out domain is fitted too where
    every point has `heldout_bpb/<domain>` (`ScalingFit.domains`, `status.domains`). Every benchmark
    the points were scored on gets its trend against compute (`abilities.fit_abilities`,
    `status.benchmarks`), whether or not the loss law could be fitted.
    """
    status, result, inputs = _fit_loss(rows, loss_key, resamples)
    try:
        status.benchmarks = fit_abilities(rows, resamples)
    except ImportError as err:  # numpy/scipy missing, as for the loss law
        status.note = "; ".join(n for n in (status.note, f"benchmark trends unavailable: {err}") if n)
    return status, result, inputs


def _fit_loss(
    rows: Sequence[PointRow], loss_key: str | None, resamples: int | None
) -> tuple[ScalingLawStatus, ScalingFit | None, list[FitInput]]:
    inputs, missing = fit_inputs(rows)
    skipped = (
        f"{len(missing)} succeeded point(s) lack {PARAMS_KEY}/{TOKENS_KEY}: {', '.join(missing)}"
        if missing
        else ""
    )
    key = choose_loss_key(inputs, loss_key)

    def unfitted(error: str, note: str = "") -> ScalingLawStatus:
        return ScalingLawStatus(
            params_axis=PARAMS_AXIS,
            data_axis=DATA_AXIS,
            loss_key=key,
            loss_axis=_loss_axis(key),
            error=error,
            note=note,
        )

    usable = [i for i in inputs if i.value(key) is not None]
    if len(usable) < len(inputs):
        lacking = [i.name for i in inputs if i.value(key) is None]
        skipped = "; ".join(
            n for n in (skipped, f"{len(lacking)} point(s) lack {key}: {', '.join(lacking)}") if n
        )
    if not usable:
        error = f"no succeeded point carries num_params, tokens_seen and {key}"
        return unfitted(error, skipped), None, inputs
    try:  # numpy and scipy: loaded when a sweep is fitted, not by every importer of the sweep core
        from .scaling_law import RESAMPLES, fit
    except ImportError as err:  # numpy/scipy missing: the sweep is complete either way
        return ScalingLawStatus(error=f"scaling-law fit unavailable: {err}"), None, inputs
    try:
        result = fit(
            _points(usable, key), resamples=RESAMPLES if resamples is None else resamples, loss_key=key
        )
    except ValueError as err:
        return unfitted(str(err)), None, usable
    for domain_key in domain_keys(usable):
        n = DOMAIN_RESAMPLES if resamples is None else resamples
        result.domains[domain_key.split("/", 1)[1]] = fit(
            _points(usable, domain_key), resamples=n, loss_key=domain_key
        )
    status = law_status(result)
    status.note = "; ".join(n for n in (status.note, skipped) if n)
    return status, result, usable


def _loss_axis(key: str) -> str:
    if key in LOSS_AXES:
        return LOSS_AXES[key]
    if key.startswith(HELDOUT_KEY + "/"):
        return f"L: held-out bits per byte on {key.split('/', 1)[1]} at the final checkpoint ({key})"
    return f"L: {key} at the final checkpoint"


def _points(inputs: Sequence[FitInput], key: str) -> list[Point]:
    from .scaling_law import Point  # numpy, as above

    return [Point(i.params, i.tokens, float(i.value(key) or 0.0), i.name, i.fraction) for i in inputs]


def law_status(fit: ScalingFit) -> ScalingLawStatus:
    """A fitted law as `status.scalingLaw` (and `scaling_law.json`): the numbers, not only the prose.

    Compact: each coefficient with its interval, the leave-one-out summary and one residual row
    per point; never the bootstrap samples. Non-finite numbers are left out: they are not valid
    JSON for the API server.
    """
    out = ScalingLawStatus(
        form=fit.form,
        summary=fit.summary(),
        num_points=fit.num_points,
        params_axis=PARAMS_AXIS,
        data_axis=DATA_AXIS,
        loss_key=fit.loss_key,
        loss_axis=_loss_axis(fit.loss_key),
        note=fit.note,
    )
    out.coefficients, out.per_axis = _coefficients(fit), _axis_laws(fit)
    out.residual_rms = _finite(fit.residual_rms)
    out.estimates, out.loo = _estimates(fit), _loo(fit)
    if fit.form == "chinchilla" and (optimal := fit.compute_optimal()) is not None:
        out.compute_optimal = ComputeOptimal(**{k: _finite(v) for k, v in optimal.items()})
    if fit.resamples:
        out.uncertainty = Uncertainty(
            level=fit.level, resamples=fit.resamples, used=fit.resamples_used, seed=fit.seed
        )
    out.residuals = [
        PointFit(
            name=p.name,
            axis=p.axis,
            observed=_finite(p.observed),
            predicted=_finite(p.predicted),
            residual=_finite(p.residual),
            loo_error=_finite(p.loo_error),
        )
        for p in fit.points
    ]
    out.domains = [
        DomainLaw(
            domain=domain,
            loss_key=law.loss_key,
            form=law.form,
            summary=law.summary(),
            num_points=law.num_points,
            coefficients=_coefficients(law),
            per_axis=_axis_laws(law),
            estimates=_estimates(law),
            residual_rms=_finite(law.residual_rms),
            loo=_loo(law),
        )
        for domain, law in fit.domains.items()
    ]
    return out


def _coefficients(fit: ScalingFit) -> Coefficients | None:
    if fit.form != "chinchilla":
        return None
    return Coefficients(**{k: _finite(getattr(fit, k)) for k in ("E", "A", "alpha", "B", "beta")})


def _axis_laws(fit: ScalingFit) -> list[AxisLaw]:
    return [
        AxisLaw(
            axis=law.axis,
            coefficient=_finite(law.coefficient),
            slope=_finite(law.slope),
            num_points=law.num_points,
        )
        for law in fit.per_axis
    ]


def _estimates(fit: ScalingFit) -> list[Estimate]:
    out = []
    for name, value in fit.coefficients().items():
        low, high = fit.intervals.get(name, (None, None))
        out.append(Estimate(name=name, value=_finite(value), low=_finite(low), high=_finite(high)))
    return out


def _loo(fit: ScalingFit) -> LeaveOneOut | None:
    errors = fit.loo_errors()
    if not errors:
        return None
    return LeaveOneOut(
        rmse=_finite(fit.loo_rmse()), max_abs=_finite(fit.loo_max_abs()), num_points=len(errors)
    )


def fit_metrics(status: ScalingLawStatus) -> dict[str, float]:
    """`fit_*` metrics of the parent MLflow run, for either form: every coefficient with its interval
    (`fit_<name>`, `fit_<name>_low`, `fit_<name>_high`), the residual RMS, the leave-one-out error,
    and the same per held-out domain (`fit_<domain>_<name>`, ...); every benchmark's trend
    (`bench_<task>_<name>`, ...: `abilities.trend_metrics`)."""
    out = _law_metrics("fit_", status.estimates, status.residual_rms, status.loo)
    if not status.estimates:  # a status written before estimates existed: its coefficients alone
        if status.coefficients is not None:
            for key in ("E", "A", "alpha", "B", "beta"):
                if (value := getattr(status.coefficients, key)) is not None:
                    out[f"fit_{key}"] = value
        for law in status.per_axis:
            if law.coefficient is not None and law.slope is not None:
                out[f"fit_{law.axis}_coefficient"] = law.coefficient
                out[f"fit_{law.axis}_slope"] = law.slope
    if status.uncertainty is not None:
        out["fit_interval_level"] = status.uncertainty.level
        out["fit_bootstrap_resamples"] = float(status.uncertainty.used)
    out["fit_num_points"] = float(status.num_points)
    for domain in status.domains:
        out |= _law_metrics(f"fit_{domain.domain}_", domain.estimates, domain.residual_rms, domain.loo)
    return out | trend_metrics(status.benchmarks)


def _law_metrics(
    prefix: str, estimates: Sequence[Estimate], rms: float | None, loo: LeaveOneOut | None
) -> dict[str, float]:
    out: dict[str, float] = {}
    for e in estimates:
        for suffix, value in (("", e.value), ("_low", e.low), ("_high", e.high)):
            if value is not None:
                out[f"{prefix}{e.name}{suffix}"] = value
    if rms is not None:
        out[f"{prefix}residual_rms"] = rms
    if loo is not None:
        for name, value in (("loo_rmse", loo.rmse), ("loo_max_abs", loo.max_abs)):
            if value is not None:
                out[f"{prefix}{name}"] = value
    return out


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def plot_fit(inputs: Sequence[FitInput], fit: ScalingFit, title: str) -> bytes:
    """The fit's plot (PNG bytes) over its inputs: see `plots.plot_png`."""
    from .plots import plot_png  # matplotlib (~0.5 s): only when a plot is drawn

    return plot_png(_points(inputs, fit.loss_key), fit, title)
