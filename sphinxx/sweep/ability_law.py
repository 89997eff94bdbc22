"""How a benchmark score moves with compute: a logistic in log-compute, with bootstrap bands.

Pure numerics (numpy + scipy), shared by the operator and the local runner. A benchmark score is
bounded (0..100 percent, MME's 0..2000) and rises, if at all, from chance towards a ceiling:
a power law would leave the scale, so the trend is the saturating form

    s(C) = floor + (ceiling - floor) / (1 + exp(-slope * (log10 C - midpoint)))

with C = 6 N D the training compute of a point, `floor` the score as C -> 0 and `ceiling` as
C -> infinity (both inside the metric's range; ceiling < floor is a score that falls with
compute), `midpoint` the log10 C at half way and `slope` the steepness per decade (>= 0).
One variable (C) rather than (N, D) because a sweep of a few sizes x fractions has too few points
for a two-variable saturating law, and because C is the axis the emergent-ability literature
(Wei et al. 2022; Schaeffer et al. 2023) compares families on.

Fitted by variable projection, as the loss law is: for fixed (slope, midpoint) the form is linear
in (floor, ceiling), solved in closed form inside the metric's box, so only two nonlinear
parameters are searched on a grid; the best grid point starts a bounded least-squares refinement of
all four. Bounds keep the fit honest: `slope` at most
`SLOPE_SPAN / span` (a transition no sharper than the sweep can resolve) and `midpoint` within
one span of the points. Bootstrap (points resampled with replacement, seeded) gives percentile
intervals of the four parameters and a pointwise band of the curve. With too few points (fewer
than `MIN_POINTS`, or fewer than `MIN_COMPUTES` distinct C) or scores that do not vary, no fit is
made and the reason says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

MIN_POINTS = 5  # a 4-parameter curve through 4 points interpolates them: no trend to speak of
MIN_COMPUTES = 4  # distinct compute values
RESAMPLES = 100
LEVEL = 0.9
SEED = 0
SLOPE_SPAN = 20.0  # slope <= SLOPE_SPAN / (span of log10 C): the 10-90% rise takes >= 22% of the span
PARAMS = ("floor", "ceiling", "midpoint", "slope")
BAND_POINTS = 25  # the band's grid over the points' log10 C
_GRID = 24  # grid size per nonlinear parameter of a first fit


@dataclass(frozen=True)
class ScorePoint:
    params: float  # N
    data: float  # D
    score: float
    name: str = ""
    fraction: float = 0.0

    @property
    def compute(self) -> float:
        return 6.0 * self.params * self.data


@dataclass
class Trend:
    """A fitted logistic trend, or (`reason`) why none was fitted."""

    num_points: int
    low: float  # the metric's range: floor and ceiling stay inside
    high: float
    floor: float | None = None
    ceiling: float | None = None
    midpoint: float | None = None  # log10 C at half way between floor and ceiling
    slope: float | None = None  # per decade of compute
    residual_rms: float | None = None  # in score units
    reason: str = ""
    level: float = LEVEL
    seed: int = SEED
    resamples: int = 0
    resamples_used: int = 0
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: list[dict[str, float]] = field(default_factory=list)
    points: list[ScorePoint] = field(default_factory=list)  # the points fitted
    predicted: list[float] = field(default_factory=list)  # the trend at each of them

    @property
    def fitted(self) -> bool:
        return self.floor is not None

    def coefficients(self) -> dict[str, float]:
        return {k: float(v) for k in PARAMS if (v := getattr(self, k)) is not None}

    def predict(self, compute: float | np.ndarray) -> np.ndarray:
        assert self.fitted, self.reason
        return logistic(self.coefficients(), np.log10(np.asarray(compute, dtype=np.float64)))

    def band(self, compute: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Pointwise percentile band of the curve over the bootstrap refits, None without them."""
        if len(self.samples) < 2:
            return None
        x = np.log10(np.asarray(compute, dtype=np.float64))
        curves = np.array([logistic(s, x) for s in self.samples])
        tail = (1.0 - self.level) / 2.0
        low, high = np.quantile(curves, [tail, 1.0 - tail], axis=0)
        return low, high

    def summary(self, name: str = "score") -> str:
        if not self.fitted:
            return f"{name}: no trend ({self.reason})"
        return (
            f"{name} = {self.floor:.4g} + ({self.ceiling:.4g} - {self.floor:.4g}) / "
            f"(1 + exp(-{self.slope:.3g} (log10 C - {self.midpoint:.3f})))"
            f"  ({self.num_points} points, RMS {self.residual_rms:.3g})"
        )


def logistic(c: dict[str, float], x: np.ndarray) -> np.ndarray:
    z = np.clip(c["slope"] * (x - c["midpoint"]), -60.0, 60.0)
    return c["floor"] + (c["ceiling"] - c["floor"]) / (1.0 + np.exp(-z))


def fit_trend(
    points: Sequence[ScorePoint],
    low: float,
    high: float,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
) -> Trend:
    """The logistic trend of the points' scores in log10 C, with bootstrap intervals and band.

    `low`..`high` is the metric's range; it widens to hold every observed score (a score committed
    on another scale is fitted, not clipped).
    """
    points = [p for p in points if _usable(p)]
    scores = [p.score for p in points]
    low, high = min([low, *scores]), max([high, *scores])
    out = Trend(num_points=len(points), low=low, high=high, level=level, seed=seed, points=points)
    if (reason := degenerate(points, low, high)) is not None:
        out.reason = reason
        return out
    x = np.log10(np.array([p.compute for p in points]))
    y = np.array(scores, dtype=np.float64)
    box = _Box(x, low, high)
    c = box.fit(x, y, ())
    out.floor, out.ceiling, out.midpoint, out.slope = (c[k] for k in PARAMS)
    pred = logistic(c, x)
    out.predicted = [float(v) for v in pred]
    out.residual_rms = float(np.sqrt(np.mean((pred - y) ** 2)))
    _bootstrap(out, box, x, y, (c["midpoint"], c["slope"]), resamples)
    return out


def degenerate(points: Sequence[ScorePoint], low: float, high: float) -> str | None:
    """Why these points support no trend, or None."""
    computes = _distinct(np.log10([p.compute for p in points]))
    if len(points) < MIN_POINTS or computes < MIN_COMPUTES:
        return (
            f"too few points: {len(points)} point(s) at {computes} compute value(s); a 4-parameter "
            f"logistic needs {MIN_POINTS} points at {MIN_COMPUTES} distinct C = 6ND"
        )
    scores = [p.score for p in points]
    if max(scores) - min(scores) <= 1e-9 * max(high - low, 1.0):
        return f"every point scores {scores[0]:.4g}: no trend to fit"
    return None


def _distinct(x: np.ndarray) -> int:
    """Distinct compute values among log10 C (equal to 1e-6 decades: 6 N D in floating point)."""
    return len({round(float(v), 6) for v in x})


def _usable(p: ScorePoint) -> bool:
    return all(math.isfinite(v) for v in (p.params, p.data, p.score)) and p.params > 0 and p.data > 0


class _Box:
    """The fit's bounds on one set of points: floor/ceiling in [low, high], midpoint and slope by span."""

    def __init__(self, x: np.ndarray, low: float, high: float) -> None:
        span = max(float(x.max() - x.min()), 1e-6)
        self.low, self.high = low, high
        self.mid_bounds = (float(x.min()) - span, float(x.max()) + span)
        self.slope_max = SLOPE_SPAN / span
        self.grid = [
            (m, s)
            for m in np.linspace(*self.mid_bounds, _GRID)
            for s in np.geomspace(self.slope_max / 200, self.slope_max, _GRID)
        ]

    def linear(self, sig: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Least-squares (floor, ceiling) in the box for each row of sigmoid values `sig` (k x n)."""
        a, b = 1.0 - sig, sig  # y ~ floor * a + ceiling * b
        saa, sbb, sab = (a * a).sum(1), (b * b).sum(1), (a * b).sum(1)
        say, sby = (a * y).sum(1), (b * y).sum(1)
        det = saa * sbb - sab**2
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.where(det > 1e-12, (sbb * say - sab * sby) / det, np.nan)
            g = np.where(det > 1e-12, (saa * sby - sab * say) / det, np.nan)
        candidates = [(f, g)]
        for fixed in (self.low, self.high):  # the box's edges: one of the two pinned, the other solved
            with np.errstate(divide="ignore", invalid="ignore"):
                candidates.append((np.full_like(saa, fixed), (sby - fixed * sab) / sbb))
                candidates.append(((say - fixed * sab) / saa, np.full_like(saa, fixed)))
        best_f, best_g, best = np.zeros_like(saa), np.zeros_like(saa), np.full_like(saa, np.inf)
        for cf, cg in candidates:
            cf = np.clip(np.nan_to_num(cf, nan=self.low), self.low, self.high)
            cg = np.clip(np.nan_to_num(cg, nan=self.low), self.low, self.high)
            sse = ((cf[:, None] * a + cg[:, None] * b - y) ** 2).sum(1)
            better = sse < best
            best_f, best_g, best = (
                np.where(better, cf, best_f),
                np.where(better, cg, best_g),
                np.minimum(sse, best),
            )
        return np.stack([best_f, best_g], 1), best

    def sigmoid(self, x: np.ndarray, ms: np.ndarray) -> np.ndarray:
        z = np.clip(ms[:, 1:2] * (x[None, :] - ms[:, 0:1]), -60.0, 60.0)
        return 1.0 / (1.0 + np.exp(-z))

    def fit(
        self, x: np.ndarray, y: np.ndarray, starts: Sequence[tuple[float, float]], coarse: bool = False
    ) -> dict[str, float]:
        """(floor, ceiling, midpoint, slope) of least squares: the grid's best (plus `starts`, with
        floor and ceiling solved in the box), refined jointly by bounded least squares. A bootstrap
        refit (`coarse`) searches every 12th grid point beside the full fit's values."""
        from scipy.optimize import least_squares  # scipy (~1 s): when a fit runs, not at import

        grid = np.array(list(starts) + self.grid[:: 12 if coarse else 1])
        linear, sse = self.linear(self.sigmoid(x, grid), y)
        best = int(np.argmin(sse))
        lower = np.array([self.low, self.low, self.mid_bounds[0], 0.0])
        upper = np.array([self.high, self.high, self.mid_bounds[1], self.slope_max])
        span = upper - lower
        start = np.clip(np.concatenate([linear[best], grid[best]]), lower + 1e-9 * span, upper - 1e-9 * span)

        def residuals(p: np.ndarray) -> np.ndarray:
            return logistic(dict(zip(PARAMS, p, strict=True)), x) - y

        def jacobian(p: np.ndarray) -> np.ndarray:
            floor, ceiling, mid, slope = p
            sig = 1.0 / (1.0 + np.exp(-np.clip(slope * (x - mid), -60.0, 60.0)))
            bump = (ceiling - floor) * sig * (1.0 - sig)
            return np.stack([1.0 - sig, sig, -slope * bump, (x - mid) * bump], axis=1)

        refined = least_squares(residuals, start, jac=jacobian, bounds=(lower, upper), method="trf",
                                x_scale=np.maximum(span, 1e-6), xtol=1e-10, ftol=1e-12)  # fmt: skip
        chosen = refined.x if 2 * refined.cost <= sse[best] else start
        return {k: float(v) for k, v in zip(PARAMS, chosen, strict=True)}


def _bootstrap(
    out: Trend, box: _Box, x: np.ndarray, y: np.ndarray, start: tuple[float, float], resamples: int
) -> None:
    """Refit on resampled points (a resample needs MIN_COMPUTES distinct C); percentile intervals."""
    rng = np.random.default_rng(out.seed)
    samples = []
    for _ in range(resamples):
        idx = rng.integers(0, len(x), len(x))
        if _distinct(x[idx]) < MIN_COMPUTES or np.ptp(y[idx]) <= 0:
            continue
        samples.append(box.fit(x[idx], y[idx], [start], coarse=True))
    out.resamples, out.resamples_used, out.samples = resamples, len(samples), samples
    tail = (1.0 - out.level) / 2.0
    for key in PARAMS:
        values = np.array([s[key] for s in samples])
        if len(values) >= 2:
            lo, hi = np.quantile(values, [tail, 1.0 - tail])
            out.intervals[key] = (float(lo), float(hi))
