"""A benchmark's trend against compute: the logistic in log10 C, its bands, and when none is fitted.

Checked against the truth that generated the scores: known floor, ceiling, midpoint and slope on a
sweep grid of sizes x token counts, noiseless and with seeded noise.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from sphinxx.evals.task import METRICS
from sphinxx.schema.status import BenchmarkScore, PointRow, RunPhase
from sphinxx.sweep.abilities import (
    METRIC_RANGES,
    committed_benchmarks,
    fit_abilities,
    metric_range,
    plot_abilities,
)
from sphinxx.sweep.ability_law import ScorePoint, Trend, fit_trend, logistic

TRUE = {"floor": 25.0, "ceiling": 85.0, "midpoint": 17.0, "slope": 2.0}
SIZES = (1e6, 3e6, 1e7, 3e7)
TOKENS = (1e9, 3e9, 1e10)


def truth(points: list[ScorePoint], c: dict[str, float] = TRUE) -> np.ndarray:
    return logistic(c, np.log10([p.compute for p in points]))


def grid(noise: float, seed: int, c: dict[str, float] = TRUE) -> list[ScorePoint]:
    rng = np.random.default_rng(seed)
    out = []
    for n, d in itertools.product(SIZES, TOKENS):
        clean = float(logistic(c, np.array(math.log10(6 * n * d))))
        out.append(ScorePoint(n, d, clean + float(rng.normal(0, noise)), f"n{n:g}-d{d:g}"))
    return out


def test_noiseless_points_give_back_the_true_curve_and_a_band_around_it() -> None:
    points = grid(noise=0.0, seed=0)
    trend = fit_trend(points, 0.0, 100.0, resamples=30)
    for key, value in TRUE.items():
        assert trend.coefficients()[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key
    assert trend.residual_rms is not None and trend.residual_rms < 1e-6
    computes = np.array([p.compute for p in points])
    band = trend.band(computes)
    assert band is not None
    assert np.all(band[0] <= truth(points) + 1e-6) and np.all(truth(points) - 1e-6 <= band[1])
    assert np.max(band[1] - band[0]) < 1e-3  # every resample lies on the same curve


def test_noisy_points_recover_the_parameters_within_their_intervals() -> None:
    """1.5 points of noise on a 0..100 score (the first seed): estimates near the truth, each 90%
    interval holds it, and the band holds the true curve over (nearly) the whole compute range."""
    points = grid(noise=1.5, seed=0)
    trend = fit_trend(points, 0.0, 100.0, resamples=100, seed=0)
    c = trend.coefficients()
    assert c["floor"] == pytest.approx(TRUE["floor"], abs=4)
    assert c["ceiling"] == pytest.approx(TRUE["ceiling"], abs=4)
    assert c["midpoint"] == pytest.approx(TRUE["midpoint"], abs=0.1)
    assert c["slope"] == pytest.approx(TRUE["slope"], abs=0.3)
    assert trend.resamples == 100 and trend.resamples_used >= 90
    for key, value in TRUE.items():
        low, high = trend.intervals[key]
        assert low <= value <= high, (key, value, low, high)
    assert _band_coverage(trend, points) >= 0.9
    # seeded: the operator and the local runner get the same intervals from the same points
    assert fit_trend(points, 0.0, 100.0, resamples=100, seed=0).intervals == trend.intervals


def _band_coverage(trend: Trend, points: list[ScorePoint]) -> float:
    """The share of a grid over the points' compute range where the band holds the true curve."""
    inside = np.geomspace(min(p.compute for p in points), max(p.compute for p in points), 25)
    band = trend.band(inside)
    assert band is not None
    real = logistic(TRUE, np.log10(inside))
    assert np.max(band[1] - band[0]) < 15  # informative, not "anything between 0 and 100"
    return float(np.mean((band[0] <= real) & (real <= band[1])))


def test_the_intervals_and_the_band_cover_the_truth_about_as_often_as_they_claim() -> None:
    """Ten noise draws: each parameter's 90% interval holds the truth in at least 7 of them (a
    percentile bootstrap on 12 points runs a little narrow), the band the true curve on most of
    the range."""
    covered = dict.fromkeys(TRUE, 0)
    bands = []
    for seed in range(10):
        points = grid(noise=1.5, seed=seed)
        trend = fit_trend(points, 0.0, 100.0, resamples=60)
        for key, value in TRUE.items():
            low, high = trend.intervals[key]
            covered[key] += low <= value <= high
        bands.append(_band_coverage(trend, points))
    assert min(covered.values()) >= 7, covered
    assert np.mean(bands) >= 0.7, bands


def test_a_falling_score_and_the_metric_range_bound_the_fit() -> None:
    falling = {"floor": 70.0, "ceiling": 30.0, "midpoint": 17.2, "slope": 1.5}
    trend = fit_trend(grid(noise=0.0, seed=0, c=falling), 0.0, 100.0, resamples=0)
    assert trend.coefficients() == pytest.approx(falling, rel=1e-4)
    # scores pressed against the top of the scale: the ceiling stays inside it
    saturated = {"floor": 40.0, "ceiling": 100.0, "midpoint": 16.5, "slope": 3.0}
    points = [ScorePoint(p.params, p.data, min(100.0, p.score + 1.0)) for p in grid(0.0, 0, c=saturated)]
    trend = fit_trend(points, 0.0, 100.0, resamples=20)
    assert trend.ceiling is not None and trend.ceiling <= 100.0
    assert trend.intervals["ceiling"][1] <= 100.0 and trend.intervals["floor"][0] >= 0.0


@pytest.mark.parametrize(
    ("points", "reason"),
    [
        ([ScorePoint(1e6 * (i + 1), 1e9, 10.0 * i) for i in range(4)], "too few points: 4 point(s)"),
        # six points but only three compute values (C = 6ND repeats along a diagonal)
        (
            [ScorePoint(n, c / 6 / n, c / 1e15) for c in (1e15, 1e16, 1e17) for n in (1e6, 1e7)],
            "at 3 compute value(s)",
        ),
        ([ScorePoint(n, d, 42.0) for n, d in itertools.product(SIZES, TOKENS)], "every point scores 42"),
        ([], "too few points: 0 point(s)"),
    ],
)
def test_degenerate_inputs_give_a_reason_never_a_fit(points: list[ScorePoint], reason: str) -> None:
    trend = fit_trend(points, 0.0, 100.0, resamples=10)
    assert reason in trend.reason
    assert (
        not trend.fitted
        and trend.coefficients() == {}
        and not trend.samples
        and trend.band(np.ones(3)) is None
    )
    assert "no trend" in trend.summary("vqav2")


def test_the_status_form_of_a_degenerate_benchmark_has_its_reason_and_no_numbers() -> None:
    rows = [
        PointRow(f"p{i}", "tiny", 1.0, phase=RunPhase.SUCCEEDED, params=n, tokens=d,
                 benchmarks={"pope": BenchmarkScore(score=0.5, metric="pope")})
        for i, (n, d) in enumerate(itertools.product(SIZES, TOKENS))
    ]  # fmt: skip
    rows[0].phase = RunPhase.FAILED  # a failed point is no input
    rows[0].benchmarks = {"mme": BenchmarkScore(score=900.0, metric="mme")}  # scored there only
    rows[1].benchmarks = {}
    mme, pope = fit_abilities(rows, resamples=10)  # by name
    assert pope.benchmark == "pope" and pope.num_points == 10 and pope.form is None
    assert "every point scores 0.5" in pope.reason and not pope.estimates and not pope.band
    assert (
        pope.uncertainty is None
        and not pope.residuals
        and pope.note == "1 succeeded point(s) without a score: p1"
    )
    assert (
        mme.num_points == 0
        and "too few points: 0 point(s)" in mme.reason
        and (mme.low, mme.high) == (0, 2000)
    )
    # nothing to draw for mme (no succeeded point has it); pope's points are drawn with the reason
    assert plot_abilities(rows, [mme], "sweep") == {}


def test_every_metric_has_a_range_and_committed_scores_are_read_as_committed() -> None:
    assert set(METRIC_RANGES) <= set(METRICS)
    assert metric_range("mme") == (0.0, 2000.0) and metric_range("vqa_accuracy") == (0.0, 1.0)
    record = {
        "loss": 2.0,
        "benchmarks": {
            "textvqa": {"score": 0.315, "metric": "vqa_accuracy", "samples": 200, "step": 40,
                        "tokens": 81920},
            "broken": {"score": "n/a", "metric": "anls"},  # does not parse: left out
            "gqa": {"score": 0.12, "metric": "exact_match", "samples": 10, "step": 40, "tokens": 81920,
                    "details": {"accuracy": 12.0}},
        },
    }  # fmt: skip
    scores = committed_benchmarks(record)
    assert sorted(scores) == ["gqa", "textvqa"]
    assert scores["textvqa"] == BenchmarkScore(0.315, "vqa_accuracy", 200, 40, 81920)
    assert scores["gqa"].details == {"accuracy": 12.0}
    assert committed_benchmarks({"loss": 2.0}) == {} and committed_benchmarks({"benchmarks": 3}) == {}
