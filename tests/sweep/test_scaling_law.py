"""The scaling-law fit recovers known coefficients and falls back honestly with few points."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sphinxx.sweep.plots import plot_png
from sphinxx.sweep.scaling_law import Point, fit

TRUE = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}  # Chinchilla's published fit


def chinchilla(n: float, d: float) -> float:
    return TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]


def grid_points(noise: float = 0.0, seed: int = 0) -> list[Point]:
    rng = np.random.default_rng(seed)
    sizes = [1.1e9, 7.7e9, 13e9, 46.7e9]
    tokens = [2e9, 5e9, 1e10, 2e10, 5e10]
    return [
        Point(n, d, chinchilla(n, d) * float(np.exp(rng.normal(0, noise))))
        for n, d in itertools.product(sizes, tokens)
    ]


def test_recovers_known_coefficients_from_exact_losses() -> None:
    result = fit(grid_points(), resamples=0)
    assert result.form == "chinchilla"
    for name in ("alpha", "beta"):
        assert getattr(result, name) == pytest.approx(TRUE[name], rel=0.05)
    assert result.E == pytest.approx(TRUE["E"], rel=0.05)
    for n, d in ((3e9, 3e9), (30e9, 3e10)):  # interpolation inside the sweep
        assert result.predict(n, d) == pytest.approx(chinchilla(n, d), rel=0.005)
    assert result.residual_rms < 1e-3


def test_tolerates_small_noise() -> None:
    result = fit(grid_points(noise=0.002, seed=1), resamples=0)
    assert result.form == "chinchilla"
    assert result.predict(5e9, 1e10) == pytest.approx(chinchilla(5e9, 1e10), rel=0.01)


def test_few_points_fall_back_to_per_axis_power_laws() -> None:
    # A 2 x 2 sweep (the tiny demo): L = 3 * N^-0.1 * D^-0.2 exactly.
    points = [Point(n, d, 3 * n**-0.1 * d**-0.2) for n, d in itertools.product((1e6, 4e6), (1e5, 2e5))]
    result = fit(points)
    assert result.form == "per-axis"
    slopes = {law.axis: law.slope for law in result.per_axis}
    assert slopes["params"] == pytest.approx(0.1, abs=1e-9)
    assert slopes["data"] == pytest.approx(0.2, abs=1e-9)
    assert "too few" in result.note


def test_degenerate_sweep_fits_nothing_and_says_so() -> None:
    result = fit([Point(1e6, 1e5, 2.0), Point(1e6, 1e5, 2.1)])
    assert result.per_axis == [] and "no law" in result.note
    with pytest.raises(ValueError, match="no points"):
        fit([Point(1e6, 1e5, float("nan"))])


def test_plot_is_a_png() -> None:
    points = grid_points()
    png = plot_png(points, fit(points, resamples=20))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def _crd_scaling_law_schema() -> dict:
    from sphinxx.operator import crds

    sweep = next(c for c in crds.crds() if c["spec"]["names"]["kind"] == "ScalingSweep")
    status_schema = sweep["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    return status_schema["properties"]["scalingLaw"]


def test_sweep_status_carries_the_fitted_coefficients() -> None:
    import json

    import jsonschema

    from sphinxx.schema.status import dump_status
    from sphinxx.sweep.results import law_status

    def scaling_law_status(f):
        return dump_status(law_status(f))

    result = fit(grid_points(), resamples=20)
    law = json.loads(json.dumps(scaling_law_status(result)))  # what the API server stores
    jsonschema.Draft4Validator(_crd_scaling_law_schema()).validate(law)
    assert law["form"] == "chinchilla" and law["numPoints"] == 20
    for name in ("alpha", "beta", "E"):
        assert law["coefficients"][name] == pytest.approx(TRUE[name], rel=0.05)
    assert law["coefficients"]["A"] == result.A and law["residualRms"] == result.residual_rms

    small = [Point(n, d, 3 * n**-0.1 * d**-0.2) for n, d in itertools.product((1e6, 4e6), (1e5, 2e5))]
    law = scaling_law_status(fit(small))
    jsonschema.Draft4Validator(_crd_scaling_law_schema()).validate(law)
    assert "coefficients" not in law and "too few" in law["note"]
    assert {p["axis"]: p["slope"] for p in law["perAxis"]} == pytest.approx({"params": 0.1, "data": 0.2})


def test_non_finite_numbers_stay_out_of_the_status() -> None:
    from sphinxx.schema.status import dump_status
    from sphinxx.sweep.results import law_status
    from sphinxx.sweep.scaling_law import ScalingFit

    def scaling_law_status(f):
        return dump_status(law_status(f))

    broken = ScalingFit(
        "chinchilla", 6, E=1.0, A=float("inf"), alpha=0.3, B=2.0, beta=0.2, residual_rms=float("nan")
    )
    law = scaling_law_status(broken)
    assert set(law["coefficients"]) == {"E", "alpha", "B", "beta"} and "residualRms" not in law


def test_per_axis_summary_writes_each_law_with_its_signed_exponent() -> None:
    """L = k * N^e with e the fitted exponent, whatever its sign (a double minus once read `N^--0.024`)."""
    points = [Point(n, d, 3 * n**-0.1 * d**0.05) for n, d in itertools.product((1e6, 4e6), (1e5, 2e5))]
    summary = fit(points).summary()
    assert "N^-0.100" in summary and "D^0.050" in summary and "--" not in summary
