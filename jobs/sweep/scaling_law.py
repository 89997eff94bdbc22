"""Fit a scaling law to a finished sweep: loss against model size N and data size D.

Pure numerics (numpy + scipy), shared by the operator (when a ScalingSweep completes)
and the local sweep runner. The full form is Chinchilla's (Hoffmann et al. 2022):

    L(N, D) = E + A / N**alpha + B / D**beta

fitted by variable projection (see `_fit_chinchilla`). Five parameters need points that vary N and D independently:
with fewer than `MIN_POINTS_FULL` points or fewer than 3 distinct values on either
axis, the fit falls back to one power law per axis, L = k * x**-slope, each fitted on
the slice where the other axis is largest (the best-trained points), and says so.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

MIN_POINTS_FULL = 6


@dataclass(frozen=True)
class Point:
    params: float  # N: model parameters (trainable LLM + projector counts are what scale)
    data: float  # D: training tokens (or samples) the point saw
    loss: float  # final (or best) validation/training loss


@dataclass
class PowerLaw:
    coefficient: float  # k in L = k * x**-slope
    slope: float
    axis: str  # "params" or "data"
    num_points: int


@dataclass
class ScalingFit:
    form: str  # "chinchilla" or "per-axis"
    num_points: int
    E: float | None = None
    A: float | None = None
    alpha: float | None = None
    B: float | None = None
    beta: float | None = None
    per_axis: list[PowerLaw] = field(default_factory=list)
    residual_rms: float | None = None  # RMS of log-space residuals
    note: str = ""

    def predict(self, params: float, data: float) -> float:
        if self.form == "chinchilla":
            assert None not in (self.E, self.A, self.alpha, self.B, self.beta), "a chinchilla fit has all five"
            return self.E + self.A / params**self.alpha + self.B / data**self.beta  # type: ignore[operator]
        raise ValueError("a per-axis fit has no joint prediction; use per_axis")

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if self.form == "chinchilla":
            return (
                f"L(N, D) = {self.E:.4g} + {self.A:.4g}/N^{self.alpha:.3f} + {self.B:.4g}/D^{self.beta:.3f}"
                f"  ({self.num_points} points, log-RMS {self.residual_rms:.3g})"
            )
        symbol = {"params": "N", "data": "D"}
        laws = "; ".join(f"L = {p.coefficient:.4g} * {symbol[p.axis]}^{-p.slope:.3f}" for p in self.per_axis)
        return f"per-axis power laws: {laws or 'none'} ({self.note or f'{self.num_points} points'})"


def fit(points: Sequence[Point]) -> ScalingFit:
    """Fit the full law when the sweep supports it, otherwise per-axis power laws."""
    points = [p for p in points if _finite_positive(p)]
    if not points:
        raise ValueError("no points with positive, finite params, data and loss to fit")
    distinct_n = len({p.params for p in points})
    distinct_d = len({p.data for p in points})
    if len(points) >= MIN_POINTS_FULL and distinct_n >= 3 and distinct_d >= 3:
        return _fit_chinchilla(points)
    return _fit_per_axis(
        points,
        note=f"{len(points)} points, {distinct_n} sizes x {distinct_d} data sizes: too few for the 5-parameter law",
    )


def _finite_positive(p: Point) -> bool:
    return all(math.isfinite(v) and v > 0 for v in (p.params, p.data, p.loss))


def _fit_chinchilla(points: Sequence[Point]) -> ScalingFit:
    """Variable projection: for fixed exponents the law is linear in (E, A, B).

    So the exponents are searched on a grid and refined (Nelder-Mead), and for each pair
    E, A, B >= 0 come from non-negative least squares on relative residuals (which
    approximate Chinchilla's log residuals). Fast and free of bad local minima in the
    linear coefficients, which Chinchilla's many-start L-BFGS needs to avoid.
    """
    from scipy.optimize import minimize, nnls

    n = np.array([p.params for p in points], dtype=np.float64)
    d = np.array([p.data for p in points], dtype=np.float64)
    loss = np.array([p.loss for p in points], dtype=np.float64)

    def solve(alpha: float, beta: float) -> tuple[np.ndarray, float]:
        design = np.stack([np.ones_like(n), n**-alpha, d**-beta], axis=1) / loss[:, None]
        coef, residual = nnls(design, np.ones_like(loss))
        return coef, residual

    grid = np.linspace(0.02, 1.5, 38)
    start = min(itertools.product(grid, grid), key=lambda ab: solve(*ab)[1])
    def objective(ab: np.ndarray) -> float:
        return solve(*np.clip(ab, 1e-3, 3.0))[1]

    refined = minimize(
        objective,
        np.asarray(start, dtype=np.float64),
        method="Nelder-Mead",
        options={"xatol": 1e-6, "fatol": 1e-14, "maxiter": 2000},
    )
    alpha, beta = np.clip(refined.x, 1e-3, 3.0)
    (e, a, b), _ = solve(alpha, beta)
    out = ScalingFit(
        form="chinchilla",
        num_points=len(points),
        E=float(e),
        A=float(a),
        alpha=float(alpha),
        B=float(b),
        beta=float(beta),
    )
    pred = np.array([out.predict(p.params, p.data) for p in points])
    out.residual_rms = float(np.sqrt(np.mean((np.log(pred) - np.log(loss)) ** 2)))
    return out


def _fit_per_axis(points: Sequence[Point], note: str) -> ScalingFit:
    out = ScalingFit(form="per-axis", num_points=len(points), note=note)
    for axis, other in (("params", "data"), ("data", "params")):
        top = max(getattr(p, other) for p in points)
        slice_ = [p for p in points if getattr(p, other) == top]
        xs = np.log([getattr(p, axis) for p in slice_])
        if len(set(xs.tolist())) < 2:
            continue
        ys = np.log([p.loss for p in slice_])
        slope, intercept = np.polyfit(xs, ys, 1)
        out.per_axis.append(
            PowerLaw(
                coefficient=float(np.exp(intercept)), slope=float(-slope), axis=axis, num_points=len(slice_)
            )
        )
    if not out.per_axis:
        out.note += "; every point shares N and D, so no law can be fitted"
    return out


def plot_png(points: Sequence[Point], result: ScalingFit, title: str = "SPHINX-X scaling sweep") -> bytes:
    """Loss against data size, one line per model size, with the fitted curves; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for size in sorted({p.params for p in points}):
        row = sorted((p for p in points if p.params == size), key=lambda p: p.data)
        line = ax.plot([p.data for p in row], [p.loss for p in row], "o", label=f"N = {_human(size)}")[0]
        if result.form == "chinchilla" and len(row) > 0:
            grid = np.geomspace(min(p.data for p in points), max(p.data for p in points), 50)
            ax.plot(grid, [result.predict(size, x) for x in grid], "-", color=line.get_color(), alpha=0.6)
    for law in result.per_axis:
        if law.axis == "data":
            grid = np.geomspace(min(p.data for p in points), max(p.data for p in points), 50)
            ax.plot(
                grid,
                law.coefficient * grid**-law.slope,
                "--",
                color="gray",
                alpha=0.7,
                label="per-axis fit (largest N)",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training data D")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.text(0.01, 0.01, result.summary(), transform=ax.transAxes, fontsize=6, va="bottom")
    ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"
