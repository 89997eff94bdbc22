"""How abilities scale: every benchmark's score per point, and its trend against compute.

One definition for the operator (which reads the scores from each TrainingRun's status, copied from
its newest committed checkpoint) and the local runner (which reads the checkpoint itself):

- the job commits, with a checkpoint's metrics, `benchmarks: {<task>: {score, metric, samples,
  step, tokens, details}}`, the score a fraction in [0, 1] (MME on its own 0..2000; docs/evaluation.md,
  "How abilities scale across a sweep"); `committed_benchmarks` reads it into typed rows;
- a point's compute is C = 6 N D with N its `num_params` and D the tokens seen at the evaluated
  step (the record's `tokens`, else the point's `tokens_seen`);
- each benchmark gets a logistic trend in log10 C (`ability_law`), over the succeeded points that
  carry a score on it; too few points, or scores that do not vary, give a reason instead.

The table (`benchmark_table`) is the one text both the local runner and `kubectl sphinxx status`
print, and the rows (`table_rows`) are what the parent MLflow run shows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sphinxx.evals.report import OWN_SCALE, score_range
from sphinxx.schema.fields import SchemaError, parse
from sphinxx.schema.status import (
    BandPoint,
    BenchmarkScore,
    BenchmarkTrend,
    Estimate,
    PointFit,
    PointRow,
    RunPhase,
    Uncertainty,
)

BENCHMARKS_KEY = "benchmarks"  # the key of a checkpoint's metrics the job commits the scores under
FORM = "logistic-log-compute"
# The range of a committed score: the headline as a fraction in [0, 1], except MME's perception,
# on its own scale (10 categories of acc + acc+, 200 each); the job's entries say so (evals/report.py).
METRIC_RANGES = OWN_SCALE
TREND_RESAMPLES = 100  # bootstrap refits of each benchmark's trend


def metric_range(metric: str) -> tuple[float, float]:
    return score_range(metric)


def committed_benchmarks(metrics: Mapping[str, Any]) -> dict[str, BenchmarkScore]:
    """The benchmark scores of a checkpoint's committed metrics, as the operator reads them into the
    TrainingRun's status (`operator/checkpoints.py`): an entry that does not parse is left out."""
    raw = metrics.get(BENCHMARKS_KEY)
    out: dict[str, BenchmarkScore] = {}
    for name, item in raw.items() if isinstance(raw, dict) else ():
        try:
            out[str(name)] = parse(BenchmarkScore, item)
        except SchemaError:
            continue
    return out


def benchmark_names(rows: Sequence[PointRow]) -> list[str]:
    """Every benchmark any point has a score on, sorted."""
    return sorted({name for row in rows for name in (row.benchmarks or {})})


def metric_of(rows: Sequence[PointRow], name: str) -> str:
    """The metric of benchmark `name`, as the first point scored on it says."""
    return next((r.benchmarks or {})[name].metric for r in rows if name in (r.benchmarks or {}))


def compute_of(row: PointRow, score: BenchmarkScore | None = None) -> float | None:
    """C = 6 N D of a point (D: the evaluated step's tokens when the score carries them)."""
    tokens = score.tokens if score is not None and score.tokens else row.tokens
    return 6.0 * row.params * tokens if row.params and tokens else None


def table_rows(rows: Sequence[PointRow]) -> list[dict[str, Any]]:
    """One dict per point: name, model, data fraction, phase, N, D, C and every benchmark's score
    (None where the point has none): the parent MLflow run's table."""
    names = benchmark_names(rows)
    out = []
    for row in rows:
        scores = row.benchmarks or {}
        out.append(
            {
                "point": row.name,
                "model": row.model,
                "data_fraction": row.data_fraction,
                "phase": row.phase.value,
                "N": row.params,
                "D": row.tokens,
                "C": compute_of(row),
                **{name: scores[name].score if name in scores else None for name in names},
            }
        )
    return out


def benchmark_table(rows: Sequence[PointRow]) -> str:
    """The per-benchmark table: one line per point, one column per benchmark (its metric under the
    name). Empty when no point has a benchmark score. Pure."""
    names = benchmark_names(rows)
    if not names:
        return ""
    metrics = {n: metric_of(rows, n) for n in names}
    width = max(12, *(len(n) for n in names), *(len(m) for m in metrics.values()))
    point_width = max(5, *(len(r.name) for r in rows))
    head = f"{'point':<{point_width}} {'N':>7} {'D':>7} {'C=6ND':>8}"
    lines = [
        head + "".join(f" {n:>{width}}" for n in names),
        " " * len(head) + "".join(f" {metrics[n]:>{width}}" for n in names),
    ]
    lines.append("-" * len(lines[0]))
    for row in rows:
        scores = row.benchmarks or {}
        cells = "".join(
            f" {scores[n].score:>{width}.4g}" if n in scores else f" {'-':>{width}}" for n in names
        )
        lines.append(
            f"{row.name:<{point_width}} {_short(row.params):>7} {_short(row.tokens):>7} "
            f"{_short(compute_of(row)):>8}{cells}"
        )
    return "\n".join(lines)


def _short(value: float | None) -> str:
    """3.2e8-style: three significant digits."""
    return "-" if value is None else f"{value:.3g}".replace("e+0", "e").replace("e+", "e")


def score_points(rows: Sequence[PointRow], name: str) -> tuple[list[Any], list[str]]:
    """(`ability_law.ScorePoint`s of the succeeded points scored on `name`, the succeeded points not)."""
    from .ability_law import ScorePoint  # numpy and scipy: when a sweep with benchmarks is fitted

    points, lacking = [], []
    for row in rows:
        if row.phase != RunPhase.SUCCEEDED:
            continue
        score = (row.benchmarks or {}).get(name)
        if score is None or not math.isfinite(score.score) or compute_of(row, score) is None:
            lacking.append(row.name)
            continue
        tokens = float(score.tokens or row.tokens or 0.0)
        points.append(ScorePoint(float(row.params or 0.0), tokens, score.score, row.name, row.data_fraction))
    return points, lacking


def fit_abilities(rows: Sequence[PointRow], resamples: int | None = None) -> list[BenchmarkTrend]:
    """A trend per benchmark over the succeeded points (`ability_law.fit_trend`), as status."""
    names = benchmark_names(rows)
    if not names:
        return []
    from .ability_law import fit_trend  # as above

    out = []
    for name in names:
        points, lacking = score_points(rows, name)
        metric = metric_of(rows, name)
        n = TREND_RESAMPLES if resamples is None else resamples
        trend = fit_trend(points, *metric_range(metric), resamples=n)
        note = f"{len(lacking)} succeeded point(s) without a score: {', '.join(lacking)}" if lacking else ""
        out.append(trend_status(name, metric, trend, note))
    return out


def plot_abilities(
    rows: Sequence[PointRow], trends: Sequence[BenchmarkTrend], title: str
) -> dict[str, bytes]:
    """One PNG per benchmark with at least one succeeded point scored on it (`plots.benchmark_png`),
    by task name."""
    points = {t.benchmark: score_points(rows, t.benchmark)[0] for t in trends}
    if not any(points.values()):
        return {}
    from .plots import benchmark_png  # matplotlib (~0.5 s): only when a plot is drawn

    return {t.benchmark: benchmark_png(points[t.benchmark], t, title) for t in trends if points[t.benchmark]}


def plot_name(name: str) -> str:
    """The file a benchmark's plot is written to, beside scaling_law.png."""
    return f"benchmark_{metric_key(name).replace('/', '_')}.png"


def trend_status(name: str, metric: str, trend: Any, note: str = "") -> BenchmarkTrend:
    """A fitted `ability_law.Trend` (or its reason) as `status.scalingLaw.benchmarks[]`."""
    import numpy as np  # with the fit, as above

    out = BenchmarkTrend(benchmark=name, metric=metric, num_points=trend.num_points, low=trend.low,
                         high=trend.high, summary=trend.summary(name), note=note,
                         reason=trend.reason)  # fmt: skip
    if not trend.fitted:
        return out
    out.form, out.residual_rms = FORM, _finite(trend.residual_rms)
    for key, value in trend.coefficients().items():
        low, high = trend.intervals.get(key, (None, None))
        out.estimates.append(Estimate(name=key, value=_finite(value), low=_finite(low), high=_finite(high)))
    if trend.resamples:
        out.uncertainty = Uncertainty(
            level=trend.level, resamples=trend.resamples, used=trend.resamples_used, seed=trend.seed
        )
    out.residuals = [
        PointFit(name=p.name, observed=_finite(p.score), predicted=_finite(y), residual=_finite(p.score - y))
        for p, y in zip(trend.points, trend.predicted, strict=True)
    ]
    computes = [p.compute for p in trend.points]
    grid = np.geomspace(min(computes), max(computes), 25)
    band = trend.band(grid)
    for i, (c, y) in enumerate(zip(grid, trend.predict(grid), strict=True)):
        low, high = (float(band[0][i]), float(band[1][i])) if band is not None else (None, None)
        out.band.append(
            BandPoint(compute=float(c), predicted=_finite(float(y)), low=_finite(low), high=_finite(high))
        )
    return out


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def metric_key(name: str) -> str:
    """A benchmark name as part of an MLflow metric key (letters, digits, _ - . / only)."""
    return re.sub(r"[^A-Za-z0-9_\-./]", "_", name)


def trend_metrics(trends: Sequence[BenchmarkTrend]) -> dict[str, float]:
    """`bench_<task>_<param>` (`_low`, `_high`) and `bench_<task>_residual_rms` of the parent run."""
    out: dict[str, float] = {}
    for trend in trends:
        prefix = f"bench_{metric_key(trend.benchmark)}_"
        for e in trend.estimates:
            for suffix, value in (("", e.value), ("_low", e.low), ("_high", e.high)):
                if value is not None:
                    out[f"{prefix}{e.name}{suffix}"] = value
        if trend.residual_rms is not None:
            out[f"{prefix}residual_rms"] = trend.residual_rms
        out[f"{prefix}num_points"] = float(trend.num_points)
    return out


def ability_report(rows: Sequence[PointRow], trends: Sequence[BenchmarkTrend]) -> str:
    """What the local runner and `kubectl sphinxx status` print under the points: the per-benchmark
    table and each benchmark's trend in one line (or why none). Empty without benchmarks. Pure."""
    table = benchmark_table(rows)
    if not table:
        return ""
    lines = ["", "benchmarks (score per point; C = 6 N D):", table]
    for trend in trends:
        band = ""
        if trend.uncertainty is not None:
            band = f"; {trend.uncertainty.level:.0%} intervals: " + ", ".join(
                f"{e.name} [{e.low:.4g}, {e.high:.4g}]"
                for e in trend.estimates
                if e.low is not None and e.high is not None
            )
        lines.append(f"trend: {trend.summary}{band}" + (f" ({trend.note})" if trend.note else ""))
    return "\n".join(lines)
