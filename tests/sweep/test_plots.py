"""The scaling-law figure is readable: log ticks labelled like 1e7, units on the axes, no text on text,
legends outside the data."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from sphinxx.sweep.plots import D_LABEL, N_LABEL, figure, sci_label
from sphinxx.sweep.scaling_law import Point, fit

TICK = re.compile(r"^\d(\.\d+)?e-?\d+$")


def _points() -> list[Point]:
    def law(n: float, d: float) -> float:
        return 1.69 + 406.4 / n**0.34 + 410.7 / d**0.28

    fractions = dict(zip((2e9, 5e9, 1e10, 2e10, 5e10), (0.04, 0.1, 0.2, 0.4, 1.0), strict=True))
    return [
        Point(n, d, law(n, d), f"p{i}", fractions[d])
        for i, (n, d) in enumerate(itertools.product((1.1e9, 7.7e9, 13e9, 46.7e9), fractions))
    ]


def _texts(fig) -> list:
    """Every text the figure draws, with its box: tick labels of ticks in view only (as drawn)."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    ticks, drawn = set(), set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                ticks |= {id(tick.label1), id(tick.label2)}
            for tick in axis._update_ticks():  # the ticks inside the view limits: what is drawn
                drawn |= {id(t) for t in (tick.label1, tick.label2) if t.get_visible()}
    out = []
    for text in fig.findobj(Text):
        if not (text.get_visible() and text.get_text().strip()) or (
            id(text) in ticks and id(text) not in drawn
        ):
            continue
        box = text.get_window_extent(renderer)
        if box.width > 0 and box.height > 0:
            out.append((text.get_text(), box))
    return out


def test_sci_labels() -> None:
    assert [sci_label(x) for x in (1e6, 2e6, 2.5e9, 1e10, 4.67e10, 9.999e6)] == [
        "1e6",
        "2e6",
        "2.5e9",
        "1e10",
        "4.67e10",
        "1e7",
    ]


@pytest.mark.parametrize("shape", ["chinchilla", "per-axis", "domains"])
def test_figure_is_readable(shape: str) -> None:
    import matplotlib.pyplot as plt

    points = _points()
    if shape == "per-axis":
        points = [p for p in points if p.params in (1.1e9, 7.7e9) and p.data in (1e10, 5e10)]
    result = fit(points, resamples=20)
    if shape == "domains":
        for domain in ("language", "ocr"):
            result.domains[domain] = fit(
                [Point(p.params, p.data, p.loss * 1.1, p.name) for p in points],
                resamples=10,
                loss_key=f"heldout_bpb/{domain}",
            )
    fig = figure(points, result, "sweep grid")
    try:
        axes = [ax for ax in fig.axes if ax.get_xscale() == "log"]
        assert len(axes) == {"chinchilla": 3, "per-axis": 2, "domains": 5}[shape]
        renderer = fig.canvas.get_renderer()
        for ax in axes:
            # log ticks: at least two labelled, every label "1e7"-style (no "6.4 x 10^0" minor labels)
            lo, hi = ax.get_xlim()
            labels = [
                t.get_text()
                for t in ax.xaxis.get_ticklabels()
                if lo <= t.get_position()[0] <= hi and t.get_text()
            ]
            assert len(labels) >= 2 and all(TICK.match(label) for label in labels), labels
            assert all(not t.get_text() for t in ax.xaxis.get_ticklabels(minor=True))
            assert ax.get_xlabel() in (D_LABEL, N_LABEL)
            # legends sit outside the data area
            legend = ax.get_legend()
            if legend is not None:
                assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
        texts = _texts(fig)
        assert len(texts) > 20  # tick labels, axis labels, titles, legends: all of them checked
        assert any(N_LABEL == t for t, _ in texts) and any(D_LABEL == t for t, _ in texts)
        for (a, box_a), (b, box_b) in itertools.combinations(texts, 2):
            assert not box_a.overlaps(box_b), f"{a!r} overlaps {b!r}"
        # the law's summary is in the title, above every axes, not a footnote over data
        title_box = fig._suptitle.get_window_extent(renderer)
        assert all(title_box.y0 >= ax.get_window_extent(renderer).y1 for ax in axes)
    finally:
        plt.close(fig)


def test_bands_come_from_the_bootstrap() -> None:
    from sphinxx.sweep.scaling_law import band

    rng = np.random.default_rng(0)
    points = [Point(p.params, p.data, p.loss * float(np.exp(rng.normal(0, 0.01)))) for p in _points()]
    result = fit(points, resamples=50)
    grid = np.geomspace(1e9, 1e11, 5)
    low, high = band(result, lambda c: c["E"] + c["A"] / 1e10 ** c["alpha"] + c["B"] / grid ** c["beta"])
    centre = np.asarray(result.predict(1e10, grid))
    assert np.all(low <= high) and np.all(high - low > 0)
    assert np.all(low <= centre + 1e-3) and np.all(centre - 1e-3 <= high)


@pytest.mark.parametrize(
    ("low", "high"), [(1e6, 1e10), (1.0e4, 2.4e4), (1.28e6, 2.98e6), (2.1e6, 2.3e6), (3e2, 9e8)]
)
def test_log_ticks_are_few_round_and_inside_even_under_a_decade(low: float, high: float) -> None:
    """matplotlib's LogLocator falls back to linear ticks (1.25e6, 1.5e6, 1.75e6, ...) under a decade,
    whose labels ran into each other on the demo's N axis."""
    from sphinxx.sweep.plots import log_ticks, sci_label

    ticks = log_ticks(low, high)
    assert 2 <= len(ticks) <= 6 and ticks == sorted(ticks)
    assert all(low * 0.999 <= t <= high * 1.001 for t in ticks)
    labels = [sci_label(t) for t in ticks]
    assert len(set(labels)) == len(labels) and all(len(label) <= 6 for label in labels), labels


@pytest.mark.parametrize("fitted", [True, False])
def test_a_benchmark_figure_is_readable_and_says_why_it_has_no_trend(fitted: bool) -> None:
    """Score against C (trend and band), N and D: the same rules as the loss figure; without a trend
    the points alone, and the reason in the title."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from sphinxx.schema.status import BenchmarkScore, PointRow, RunPhase
    from sphinxx.sweep.abilities import fit_abilities, score_points
    from sphinxx.sweep.ability_law import logistic
    from sphinxx.sweep.plots import C_LABEL, benchmark_figure

    true = {"floor": 0.1, "ceiling": 0.9, "midpoint": 17.0, "slope": 2.0}
    rows = []
    for i, (n, d) in enumerate(itertools.product((1e6, 3e6, 1e7), (1e9, 3e9, 1e10))):
        score = float(logistic(true, np.log10(6 * n * d))) if fitted else 0.25
        scores = {"count": BenchmarkScore(score, "exact_match")}
        rows.append(PointRow(f"p{i}", "tiny", (0.1, 0.3, 1.0)[i % 3], phase=RunPhase.SUCCEEDED, params=n,
                             tokens=d, benchmarks=scores))  # fmt: skip
    (trend,) = fit_abilities(rows, resamples=10)
    fig = benchmark_figure(score_points(rows, "count")[0], trend, "sweep grid")
    try:
        axes = fig.axes
        assert [ax.get_xlabel() for ax in axes] == [C_LABEL, N_LABEL, D_LABEL]
        renderer = fig.canvas.get_renderer()
        for ax in axes:
            lo, hi = ax.get_xlim()
            labels = [t.get_text() for t in ax.xaxis.get_ticklabels() if lo <= t.get_position()[0] <= hi]
            assert len(labels) >= 2 and all(TICK.match(label) for label in labels), labels
            assert ax.get_ylabel() == "count (exact_match)"
            assert not ax.get_legend().get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
        for (a, box_a), (b, box_b) in itertools.combinations(_texts(fig), 2):
            assert not box_a.overlaps(box_b), f"{a!r} overlaps {b!r}"
        title = fig._suptitle.get_text()
        band = [c for c in axes[0].collections if isinstance(c, PolyCollection)]
        curves = [line for line in axes[0].get_lines() if line.get_linestyle() == "-"]
        if fitted:
            assert "count = 0.1 + (0.9 - 0.1)" in title and "90% bootstrap" in title
            assert len(band) == 1 and len(curves) == 1
        else:
            assert "no trend (every point scores 0.25" in title and not band and not curves
    finally:
        plt.close(fig)
