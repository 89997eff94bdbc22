"""Fit a scaling law to a finished sweep: loss against model size N and data size D.

Pure numerics (numpy + scipy), shared by the operator (when a ScalingSweep completes)
and the local sweep runner. The full form is Chinchilla's (Hoffmann et al. 2022):

    L(N, D) = E + A / N**alpha + B / D**beta

fitted by variable projection (see `_fit_chinchilla`). Five parameters need points that vary N and D
independently: with fewer than `MIN_POINTS_FULL` points or fewer than 3 distinct values on either
axis, the fit falls back to one power law per axis, L = k * x**-slope, each fitted on
the slice where the other axis is largest (the best-trained points), and says so.

A law is only as good as its uncertainty, so every fit also carries (docs/operator.md,
"The scaling-law fit"): bootstrap percentile intervals of every coefficient (points resampled
with replacement and refitted, seeded so the operator and the local runner agree), the residual
of every point, and its leave-one-out prediction (the law refitted without the point, then asked
to predict it) -- the honest measure of how well the law extrapolates within the sweep. The
Chinchilla form also gives the compute-optimal allocation under C = 6 N D.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

MIN_POINTS_FULL = 6
RESAMPLES = 200  # bootstrap refits of the law
LEVEL = 0.9  # the central percentile interval reported
SEED = 0  # the bootstrap's seed: the same points give the same intervals everywhere
CHINCHILLA_KEYS = ("E", "A", "alpha", "B", "beta")
OPTIMAL_KEYS = ("G", "a", "b")  # N_opt(C) = G (C/6)^a, D_opt(C) = (C/6)/N_opt = (C/6)^b / G
_FULL_GRID = np.linspace(0.02, 1.5, 38)  # exponent grid of a first fit
_REFIT_GRID = np.linspace(
    0.05, 1.5, 8
)  # coarser grid of a refit, which also starts at the full fit's exponents


@dataclass(frozen=True)
class Point:
    params: float  # N: model parameters (trainable LLM + projector counts are what scale)
    data: float  # D: training tokens (or samples) the point saw
    loss: float  # L: the loss the fit explains (training loss, or held-out bits per byte)
    name: str = ""  # the point (a TrainingRun), for residuals
    fraction: float = 0.0  # its data fraction, for plots (one series per fraction)


@dataclass
class PowerLaw:
    coefficient: float  # k in L = k * x**-slope
    slope: float
    axis: str  # "params" or "data"
    num_points: int

    def predict(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.coefficient * np.asarray(x, dtype=np.float64) ** -self.slope


@dataclass
class PointFit:
    """One point against the law: its observed loss, the fit's prediction, and the leave-one-out one."""

    name: str
    axis: str  # "" for the Chinchilla form; the per-axis law's axis otherwise
    params: float
    data: float
    observed: float
    predicted: float
    loo_predicted: float | None = None  # refitted without this point; None where too few remain

    @property
    def residual(self) -> float:
        return self.observed - self.predicted

    @property
    def loo_error(self) -> float | None:
        return None if self.loo_predicted is None else self.observed - self.loo_predicted


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
    loss_key: str = "loss"  # which checkpoint metric L is
    level: float = LEVEL
    seed: int = SEED
    resamples: int = 0  # bootstrap refits asked for
    resamples_used: int = 0  # refits that could be made (a resample needs enough distinct N and D)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # coefficient -> (low, high)
    samples: list[dict[str, float]] = field(default_factory=list)  # bootstrap coefficient sets (plot bands)
    points: list[PointFit] = field(default_factory=list)
    domains: dict[str, ScalingFit] = field(default_factory=dict)  # per-domain laws of the same points

    def predict(self, params: float | np.ndarray, data: float | np.ndarray) -> float | np.ndarray:
        if self.form == "chinchilla":
            assert None not in (self.E, self.A, self.alpha, self.B, self.beta), (
                "a chinchilla fit has all five"
            )
            return _chinchilla(self.coefficients(), params, data)
        raise ValueError("a per-axis fit has no joint prediction; use per_axis")

    def coefficients(self) -> dict[str, float]:
        """Every coefficient by name (the names `intervals` and the `fit_*` metrics use)."""
        if self.form == "chinchilla":
            out = {k: float(getattr(self, k)) for k in CHINCHILLA_KEYS if getattr(self, k) is not None}
            return out | (compute_optimal(out) or {})
        return {
            f"{law.axis}_{k}": float(getattr(law, k))
            for law in self.per_axis
            for k in ("coefficient", "slope")
        }

    def compute_optimal(self) -> dict[str, float] | None:
        """G, a, b of N_opt(C) = G (C/6)^a (Chinchilla form with both terms present), else None."""
        return compute_optimal(self.coefficients()) if self.form == "chinchilla" else None

    def loo_errors(self) -> list[float]:
        return [e for e in (p.loo_error for p in self.points) if e is not None]

    def loo_rmse(self) -> float | None:
        errors = self.loo_errors()
        return float(np.sqrt(np.mean(np.square(errors)))) if errors else None

    def loo_max_abs(self) -> float | None:
        errors = self.loo_errors()
        return float(np.max(np.abs(errors))) if errors else None

    def summary(self) -> str:
        if self.form == "chinchilla":
            return (
                f"L(N, D) = {self.E:.4g} + {self.A:.4g}/N^{self.alpha:.3f} + {self.B:.4g}/D^{self.beta:.3f}"
                f"  ({self.num_points} points, log-RMS {self.residual_rms:.3g})"
            )
        symbol = {"params": "N", "data": "D"}
        laws = "; ".join(f"L = {p.coefficient:.4g} * {symbol[p.axis]}^{-p.slope:.3f}" for p in self.per_axis)
        return f"per-axis power laws: {laws or 'none'} ({self.note or f'{self.num_points} points'})"


def compute_optimal(coefficients: dict[str, float]) -> dict[str, float] | None:
    """The compute-optimal allocation of a Chinchilla law under C = 6 N D.

    Minimising E + A N^-alpha + B D^-beta with D = C / (6N) gives alpha A N^-alpha = beta B D^-beta,
    so N_opt = G (C/6)^a and D_opt = (C/6)^b / G with G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta/(alpha+beta), b = alpha/(alpha+beta). Undefined (None) when a term vanished (A or B = 0).
    """
    alpha, beta, a_, b_ = (coefficients.get(k, 0.0) for k in ("alpha", "beta", "A", "B"))
    if min(alpha, beta, a_, b_) <= 0:
        return None
    g = (alpha * a_ / (beta * b_)) ** (1.0 / (alpha + beta))
    if not math.isfinite(g) or g <= 0:
        return None
    return {"G": g, "a": beta / (alpha + beta), "b": alpha / (alpha + beta)}


def _chinchilla(
    c: dict[str, float], params: float | np.ndarray, data: float | np.ndarray
) -> float | np.ndarray:
    n, d = np.asarray(params, dtype=np.float64), np.asarray(data, dtype=np.float64)
    out = c["E"] + c["A"] / n ** c["alpha"] + c["B"] / d ** c["beta"]
    return float(out) if np.ndim(out) == 0 else out


def fit(
    points: Sequence[Point],
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
    loss_key: str = "loss",
) -> ScalingFit:
    """Fit the full law when the sweep supports it, otherwise per-axis power laws; then its uncertainty.

    `resamples=0` skips the bootstrap (the point estimates, residuals and leave-one-out remain).
    """
    points = [p for p in points if _finite_positive(p)]
    if not points:
        raise ValueError("no points with positive, finite params, data and loss to fit")
    distinct_n = len({p.params for p in points})
    distinct_d = len({p.data for p in points})
    if _full_form_fits(points):
        out = _fit_chinchilla(points)
        _chinchilla_uncertainty(out, points, resamples, level, seed)
    else:
        out = _fit_per_axis(
            points,
            note=(
                f"{len(points)} points, {distinct_n} sizes x {distinct_d} data sizes: "
                "too few for the 5-parameter law"
            ),
        )
        _per_axis_uncertainty(out, points, resamples, level, seed)
    out.loss_key = loss_key
    return out


def _full_form_fits(points: Sequence[Point]) -> bool:
    return (
        len(points) >= MIN_POINTS_FULL
        and len({p.params for p in points}) >= 3
        and len({p.data for p in points}) >= 3
    )


def _finite_positive(p: Point) -> bool:
    return all(math.isfinite(v) and v > 0 for v in (p.params, p.data, p.loss))


def _arrays(points: Sequence[Point]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.array([p.params for p in points], dtype=np.float64),
        np.array([p.data for p in points], dtype=np.float64),
        np.array([p.loss for p in points], dtype=np.float64),
    )


def _variable_projection(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    grid: np.ndarray,
    starts: Sequence[tuple[float, float]] = (),
) -> dict[str, float]:
    """Variable projection: for fixed exponents the law is linear in (E, A, B).

    So the exponents are searched on a grid (plus any given starts) and refined (Nelder-Mead),
    and for each pair E, A, B >= 0 come from non-negative least squares on relative residuals
    (which approximate Chinchilla's log residuals). Fast and free of bad local minima in the
    linear coefficients, which Chinchilla's many-start L-BFGS needs to avoid.
    """
    from scipy.optimize import minimize, nnls  # scipy (~1 s): when a fit runs, not at import

    ones, target = np.ones_like(n), np.ones_like(loss)

    def solve(alpha: float, beta: float) -> tuple[np.ndarray, float]:
        design = np.stack([ones, n**-alpha, d**-beta], axis=1) / loss[:, None]
        coef, residual = nnls(design, target)
        return coef, float(residual)

    candidates = list(itertools.product(grid.tolist(), grid.tolist())) + list(starts)
    start = min(candidates, key=lambda ab: solve(*ab)[1])

    def objective(ab: np.ndarray) -> float:
        return solve(*np.clip(ab, 1e-3, 3.0))[1]

    refined = minimize(
        objective,
        np.asarray(start, dtype=np.float64),
        method="Nelder-Mead",
        options={"xatol": 1e-6, "fatol": 1e-14, "maxiter": 2000},
    )
    alpha, beta = (float(x) for x in np.clip(refined.x, 1e-3, 3.0))
    (e, a, b), _ = solve(alpha, beta)
    return {"E": float(e), "A": float(a), "alpha": alpha, "B": float(b), "beta": beta}


def _fit_chinchilla(points: Sequence[Point]) -> ScalingFit:
    n, d, loss = _arrays(points)
    c = _variable_projection(n, d, loss, _FULL_GRID)
    out = ScalingFit(
        "chinchilla", len(points), E=c["E"], A=c["A"], alpha=c["alpha"], B=c["B"], beta=c["beta"]
    )
    pred = np.asarray(_chinchilla(c, n, d))
    out.residual_rms = float(np.sqrt(np.mean((np.log(pred) - np.log(loss)) ** 2)))
    out.points = [
        PointFit(p.name, "", p.params, p.data, p.loss, float(y)) for p, y in zip(points, pred, strict=True)
    ]
    return out


def _chinchilla_uncertainty(
    out: ScalingFit, points: Sequence[Point], resamples: int, level: float, seed: int
) -> None:
    """Leave-one-out predictions and bootstrap intervals: refits started at the full fit's exponents."""
    n, d, loss = _arrays(points)
    start = [(float(out.alpha or 0.3), float(out.beta or 0.3))]

    def refit(idx: np.ndarray) -> dict[str, float]:
        return _variable_projection(n[idx], d[idx], loss[idx], _REFIT_GRID, start)

    everyone = np.arange(len(points))
    for i, row in enumerate(out.points):
        c = refit(everyone[everyone != i])
        row.loo_predicted = float(_chinchilla(c, row.params, row.data))

    def sample(idx: np.ndarray) -> dict[str, float] | None:
        if len(set(n[idx].tolist())) < 3 or len(set(d[idx].tolist())) < 3:
            return None  # the five-parameter law is not identified on this resample
        c = refit(idx)
        return c | (compute_optimal(c) or {})

    _bootstrap(out, len(points), sample, resamples, level, seed)


def _power_law(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float]:
    """(coefficient, slope) of ys = coefficient * xs^-slope, least squares in log space."""
    slope, intercept = np.polyfit(np.log(xs), np.log(ys), 1)
    return float(np.exp(intercept)), float(-slope)


def _slice(points: Sequence[Point], axis: str) -> list[Point]:
    """The points a per-axis law of `axis` is fitted on: those where the other axis is largest."""
    other = "data" if axis == "params" else "params"
    top = max(getattr(p, other) for p in points)
    return [p for p in points if getattr(p, other) == top]


def _fit_per_axis(points: Sequence[Point], note: str) -> ScalingFit:
    out = ScalingFit(form="per-axis", num_points=len(points), note=note)
    for axis in ("params", "data"):
        slice_ = _slice(points, axis)
        xs = np.array([getattr(p, axis) for p in slice_], dtype=np.float64)
        if len(set(xs.tolist())) < 2:
            continue
        ys = np.array([p.loss for p in slice_], dtype=np.float64)
        k, slope = _power_law(xs, ys)
        law = PowerLaw(coefficient=k, slope=slope, axis=axis, num_points=len(slice_))
        out.per_axis.append(law)
        for i, p in enumerate(slice_):
            row = PointFit(p.name, axis, p.params, p.data, p.loss, float(law.predict(xs[i])))
            rest = np.arange(len(xs)) != i
            if len(set(xs[rest].tolist())) >= 2:  # a line needs two distinct x
                k_i, slope_i = _power_law(xs[rest], ys[rest])
                row.loo_predicted = float(k_i * xs[i] ** -slope_i)
            out.points.append(row)
    if not out.per_axis:
        out.note += "; every point shares N and D, so no law can be fitted"
    else:
        pred = np.array([p.predicted for p in out.points])
        obs = np.array([p.observed for p in out.points])
        out.residual_rms = float(np.sqrt(np.mean((np.log(pred) - np.log(obs)) ** 2)))
    return out


def _per_axis_uncertainty(
    out: ScalingFit, points: Sequence[Point], resamples: int, level: float, seed: int
) -> None:
    """Bootstrap each axis law on its own slice (the points it was fitted on), resampled together.

    A line through two points has no spread to resample (every usable resample is the same two
    points), so a law fitted on fewer than 3 points gets no interval rather than a zero-width one.
    """
    slices = {law.axis: s for law in out.per_axis if len(s := _slice(points, law.axis)) >= 3}
    if not slices:
        out.level, out.seed = level, seed
        return
    arrays = {
        axis: (
            np.array([getattr(p, axis) for p in s], dtype=np.float64),
            np.array([p.loss for p in s], dtype=np.float64),
        )
        for axis, s in slices.items()
    }
    rng = np.random.default_rng(seed)
    samples: list[dict[str, float]] = []
    for _ in range(resamples):
        sample: dict[str, float] = {}
        for axis, (xs, ys) in arrays.items():
            idx = rng.integers(0, len(xs), len(xs))
            if len(set(xs[idx].tolist())) < 2:
                continue
            k, slope = _power_law(xs[idx], ys[idx])
            sample |= {f"{axis}_coefficient": k, f"{axis}_slope": slope}
        if len(sample) == 2 * len(arrays):
            samples.append(sample)
    _summarise(out, samples, resamples, level, seed)


def _bootstrap(
    out: ScalingFit,
    size: int,
    sample: Callable[[np.ndarray], dict[str, float] | None],
    resamples: int,
    level: float,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(resamples):
        got = sample(rng.integers(0, size, size))
        if got is not None:
            samples.append(got)
    _summarise(out, samples, resamples, level, seed)


def _summarise(
    out: ScalingFit, samples: list[dict[str, float]], resamples: int, level: float, seed: int
) -> None:
    """Percentile intervals of every coefficient over the bootstrap refits."""
    out.level, out.seed, out.resamples, out.resamples_used, out.samples = (
        level,
        seed,
        resamples,
        len(samples),
        samples,
    )
    tail = (1.0 - level) / 2.0
    for key in out.coefficients():
        values = np.array([s[key] for s in samples if key in s and math.isfinite(s[key])])
        if len(values) >= 2:
            low, high = np.quantile(values, [tail, 1.0 - tail])
            out.intervals[key] = (float(low), float(high))


def band(
    result: ScalingFit, curve: Callable[[dict[str, float]], np.ndarray]
) -> tuple[np.ndarray, np.ndarray] | None:
    """The pointwise percentile band of `curve` (a function of a coefficient set) over the bootstrap."""
    if len(result.samples) < 2:
        return None
    try:
        curves = np.array([curve(s) for s in result.samples])
    except KeyError:  # that law was not bootstrapped (too few points on its slice)
        return None
    tail = (1.0 - result.level) / 2.0
    low, high = np.quantile(curves, [tail, 1.0 - tail], axis=0)
    return low, high
