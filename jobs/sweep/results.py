"""A sweep's results: what each point measured, and the scaling law fitted to them.

One definition of the fit's inputs, the same for the operator (which reads them from each
TrainingRun's status, copied from its newest committed checkpoint) and the local runner (which
reads the checkpoint itself):

- N = `num_params`: the parameters a token passes through, without the token embedding and the
  output head (for MoE, top_k of num_experts experts), as the job counted them on the model it
  trained (so `model.overrides` are counted too);
- D = `tokens_seen`: the training tokens the point consumed, from the job's counters;
- L = `loss`: the training loss at that checkpoint.

All three are metrics of the checkpoint manifest, written by the job at every commit. A point
without them (a checkpoint from an older job) is left out of the fit, and the fit says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sphinxx.jobs.schema.status import AxisLaw, Coefficients, PointRow, RunPhase, ScalingLawStatus

if TYPE_CHECKING:  # numpy and scipy stay out of the import path until a fit is made
    from .scaling_law import ScalingFit

PARAMS_KEY, TOKENS_KEY, LOSS_KEY = "num_params", "tokens_seen", "loss"
PARAMS_AXIS = "N: active non-embedding parameters (num_params)"
DATA_AXIS = "D: training tokens consumed (tokens_seen)"


@dataclass(frozen=True)
class FitInput:
    """One succeeded point, as the fit sees it."""

    name: str
    model: str
    fraction: float
    params: float  # N
    tokens: float  # D
    loss: float  # L


def row_metrics(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """The three fit metrics of a checkpoint's manifest (None where missing or not finite)."""

    def get(key: str) -> float | None:
        value = metrics.get(key)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    return {"params": get(PARAMS_KEY), "tokens": get(TOKENS_KEY), "loss": get(LOSS_KEY)}


def fit_inputs(rows: Sequence[PointRow]) -> tuple[list[FitInput], list[str]]:
    """(inputs of the succeeded points that carry N, D and L; names of succeeded points that do not)."""
    inputs, missing = [], []
    for row in rows:
        if row.phase != RunPhase.SUCCEEDED:
            continue
        if row.params and row.tokens and row.loss is not None:
            inputs.append(FitInput(row.name, row.model, row.data_fraction, row.params, row.tokens, row.loss))
        else:
            missing.append(row.name)
    return inputs, missing


def fit_sweep(rows: Sequence[PointRow]) -> tuple[ScalingLawStatus, ScalingFit | None, list[FitInput]]:
    """Fit the scaling law to a sweep's rows: (its status form, the fit itself or None, its inputs)."""
    inputs, missing = fit_inputs(rows)
    skipped = f"{len(missing)} succeeded point(s) lack {PARAMS_KEY}/{TOKENS_KEY}: {', '.join(missing)}" if missing else ""
    if not inputs:
        error = "no succeeded point carries num_params, tokens_seen and loss"
        return ScalingLawStatus(params_axis=PARAMS_AXIS, data_axis=DATA_AXIS, error=error, note=skipped), None, inputs
    try:
        from .scaling_law import Point, fit
    except ImportError as err:  # numpy/scipy missing: the sweep is complete either way
        return ScalingLawStatus(error=f"scaling-law fit unavailable: {err}"), None, inputs
    try:
        result = fit([Point(i.params, i.tokens, i.loss) for i in inputs])
    except ValueError as err:
        return ScalingLawStatus(params_axis=PARAMS_AXIS, data_axis=DATA_AXIS, error=str(err)), None, inputs
    status = law_status(result)
    status.note = "; ".join(n for n in (status.note, skipped) if n)
    return status, result, inputs


def law_status(fit: ScalingFit) -> ScalingLawStatus:
    """A fitted law as `status.scalingLaw` (and `scaling_law.json`): the numbers, not only the prose.

    Non-finite numbers are left out: they are not valid JSON for the API server.
    """
    out = ScalingLawStatus(
        form=fit.form,
        summary=fit.summary(),
        num_points=fit.num_points,
        params_axis=PARAMS_AXIS,
        data_axis=DATA_AXIS,
        note=fit.note,
    )
    if fit.form == "chinchilla":
        out.coefficients = Coefficients(**{k: _finite(getattr(fit, k)) for k in ("E", "A", "alpha", "B", "beta")})
        out.residual_rms = _finite(fit.residual_rms)
    out.per_axis = [
        AxisLaw(axis=law.axis, coefficient=_finite(law.coefficient), slope=_finite(law.slope), num_points=law.num_points)
        for law in fit.per_axis
    ]
    return out


def fit_metrics(status: ScalingLawStatus) -> dict[str, float]:
    """`fit_*` metrics of the parent MLflow run: every coefficient the law has."""
    out: dict[str, float] = {}
    if status.coefficients is not None:
        for key in ("E", "A", "alpha", "B", "beta"):
            value = getattr(status.coefficients, key)
            if value is not None:
                out[f"fit_{key}"] = value
    if status.residual_rms is not None:
        out["fit_residual_rms"] = status.residual_rms
    for law in status.per_axis:
        if law.coefficient is not None and law.slope is not None:
            out[f"fit_{law.axis}_coefficient"] = law.coefficient
            out[f"fit_{law.axis}_slope"] = law.slope
    out["fit_num_points"] = float(status.num_points)
    return out


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def plot_fit(inputs: Sequence[FitInput], fit: ScalingFit, title: str) -> bytes:
    """The fit's plot (PNG bytes) over its inputs."""
    from .scaling_law import Point, plot_png

    return plot_png([Point(i.params, i.tokens, i.loss) for i in inputs], fit, title)
