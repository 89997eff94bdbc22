"""The fit's uncertainty: bootstrap intervals, leave-one-out error, compute-optimal allocation.

Each number is checked against an independent reference: the true coefficients that generated
the losses, an exact power law refitted by hand, and a brute-force minimisation of the law at
fixed compute.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sphinxx.sweep.results import fit_metrics, law_status
from sphinxx.sweep.scaling_law import Point, compute_optimal, fit

TRUE = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}  # Chinchilla's published fit
SIZES = [1.1e9, 7.7e9, 13e9, 46.7e9]
TOKENS = [2e9, 5e9, 1e10, 2e10, 5e10]


def law(n: float, d: float) -> float:
    return TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]


def noisy_grid(noise: float, seed: int) -> list[Point]:
    rng = np.random.default_rng(seed)
    return [
        Point(n, d, law(n, d) * float(np.exp(rng.normal(0, noise))), f"n{i}-d{j}")
        for (i, n), (j, d) in itertools.product(enumerate(SIZES), enumerate(TOKENS))
    ]


def test_bootstrap_intervals_cover_the_true_coefficients() -> None:
    """1% multiplicative noise, seeded: each 90% interval holds the truth and is informative (narrow)."""
    result = fit(noisy_grid(noise=0.01, seed=1), resamples=200, level=0.9, seed=0)
    assert result.form == "chinchilla" and result.resamples == 200 and result.resamples_used >= 190
    truth = TRUE | compute_optimal(TRUE)  # type: ignore[operator]
    assert set(result.intervals) == set(truth)
    for name, value in truth.items():
        low, high = result.intervals[name]
        assert low <= value <= high, (name, value, low, high)
    # informative: the exponents and E are pinned down, not just "anything goes"
    for name, width in (("alpha", 0.25), ("beta", 0.15), ("E", 0.4), ("a", 0.25)):
        low, high = result.intervals[name]
        assert high - low < width, (name, low, high)
    # seeded: the same points give the same intervals (the operator and the local runner agree)
    again = fit(noisy_grid(noise=0.01, seed=1), resamples=200, level=0.9, seed=0)
    assert again.intervals == result.intervals


def test_leave_one_out_of_an_exact_law_is_zero() -> None:
    result = fit(noisy_grid(noise=0.0, seed=0), resamples=0)
    assert len(result.points) == 20 and all(p.loo_predicted is not None for p in result.points)
    assert result.loo_max_abs() < 1e-4 and result.loo_rmse() < 1e-4
    assert max(abs(p.residual) for p in result.points) < 1e-6


def test_leave_one_out_of_a_perturbed_point_is_its_perturbation() -> None:
    """Refitted without the perturbed point the law is exact again, so it predicts the true loss there."""
    points = noisy_grid(noise=0.0, seed=0)
    bad = 7
    delta = 0.05
    points[bad] = Point(points[bad].params, points[bad].data, points[bad].loss + delta, points[bad].name)
    result = fit(points, resamples=0)
    row = result.points[bad]
    assert row.loo_error == pytest.approx(delta, abs=2e-3)
    assert abs(row.residual) < delta  # the full fit is pulled towards the bad point; LOO is not
    assert result.loo_max_abs() == pytest.approx(abs(row.loo_error))
    errors = np.array([p.loo_error for p in result.points])
    assert result.loo_rmse() == pytest.approx(float(np.sqrt(np.mean(errors**2))))


def test_per_axis_leave_one_out_by_hand() -> None:
    """Three sizes on the largest-D slice, one off the line by 10%: LOO there is exactly that 10%."""
    k, s = 3.0, 0.1
    sizes = (1e6, 4e6, 1.6e7)
    points = [Point(n, 2e5, k * n**-s, f"n{i}") for i, n in enumerate(sizes)]
    points[1] = Point(4e6, 2e5, 1.1 * k * 4e6**-s, "n1")
    result = fit(points, resamples=0)
    assert result.form == "per-axis"
    rows = {p.name: p for p in result.points if p.axis == "params"}
    assert rows["n1"].loo_error == pytest.approx(0.1 * k * 4e6**-s, rel=1e-9)
    # the two ends: the line through the other two points, extrapolated by hand
    for name, keep in (("n0", (1, 2)), ("n2", (0, 1))):
        xs = np.log([sizes[i] for i in keep])
        ys = np.log([points[i].loss for i in keep])
        slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
        target = sizes[int(name[1])]
        predicted = float(np.exp(ys[0] + slope * (np.log(target) - xs[0])))
        assert rows[name].loo_predicted == pytest.approx(predicted, rel=1e-9)


def test_compute_optimal_allocation_matches_brute_force() -> None:
    optimal = compute_optimal(TRUE)
    assert optimal is not None
    alpha, beta = TRUE["alpha"], TRUE["beta"]
    assert optimal["a"] == pytest.approx(beta / (alpha + beta)) and optimal["a"] + optimal[
        "b"
    ] == pytest.approx(1.0)
    for flops in (1e20, 1e22, 1e24):
        n = np.geomspace(1e6, 1e14, 400_001)
        loss = law(n, flops / (6 * n))  # type: ignore[arg-type]
        n_best = n[int(np.argmin(loss))]
        n_opt = optimal["G"] * (flops / 6) ** optimal["a"]
        assert n_opt == pytest.approx(n_best, rel=1e-3)
        d_opt = flops / 6 / n_opt
        assert d_opt == pytest.approx((flops / 6) ** optimal["b"] / optimal["G"], rel=1e-9)
    assert compute_optimal(TRUE | {"A": 0.0}) is None


def test_per_axis_fallback_reports_fit_metrics_with_intervals() -> None:
    """Too few sizes for Chinchilla: the per-axis laws still get fit_* metrics, intervals and LOO."""
    rng = np.random.default_rng(3)
    points = [
        Point(n, d, 3 * n**-0.1 * d**-0.2 * float(np.exp(rng.normal(0, 0.005))), f"p{i}")
        for i, (n, d) in enumerate(itertools.product((1e6, 2e6, 4e6, 8e6), (1e5, 4e5)))
    ]
    result = fit(points, resamples=200)
    assert result.form == "per-axis" and result.resamples_used > 150
    low, high = result.intervals["params_slope"]
    assert low <= 0.1 <= high and high - low < 0.05
    assert "data_slope" not in result.intervals  # two data sizes: a line through two points has no spread
    metrics = fit_metrics(law_status(result))
    for key in (
        "fit_params_slope",
        "fit_params_slope_low",
        "fit_params_slope_high",
        "fit_params_coefficient",
        "fit_data_slope",
        "fit_loo_rmse",
        "fit_loo_max_abs",
        "fit_residual_rms",
        "fit_interval_level",
    ):
        assert key in metrics, key
    assert metrics["fit_params_slope"] == pytest.approx(0.1, abs=0.01)
    assert metrics["fit_interval_level"] == 0.9
