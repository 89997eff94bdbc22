"""The scaling-law plots a researcher keeps: one PNG for the sweep's parent run.

Panels (docs/operator.md, "The scaling-law fit"):

- loss against training tokens D, one fitted curve per model size with its bootstrap band;
- loss against parameters N, one series per data fraction (curve at that fraction's mean D);
- Chinchilla form only: iso-loss contours of the law over (N, D) with the compute-optimal
  frontier N_opt(C), D_opt(C) and iso-compute lines C = 6 N D;
- per held-out domain (where the fit has them), small multiples of loss against D.

And one PNG per benchmark (`benchmark_png`): its score against compute C = 6 N D with the logistic
trend and its bootstrap band, against N and against D (the trend at each series' other axis).

Readability is part of the contract: log axes tick at powers of ten (or at 1-2-5 multiples when
the data span less than a decade) labelled "1e7", never "6.4 x 10^0"; axes carry units; legends
sit outside the data area and the law's summary is the figure's title, so no text covers points.

matplotlib is imported inside the functions that draw: the Agg backend must be chosen before
pyplot loads, and nothing that only fits a law pays for it.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sphinxx.schema.status import BenchmarkTrend

from .ability_law import ScorePoint
from .scaling_law import Point, ScalingFit, band

D_LABEL = "training tokens D"
N_LABEL = "parameters N (active, non-embedding)"


def sci_label(x: float, _pos: Any = None) -> str:
    """A tick label: "1e7", "2e6", "2.5e6" (plain, no mathtext)."""
    if x <= 0 or not math.isfinite(x):
        return ""
    exponent = math.floor(math.log10(x) + 1e-9)
    mantissa = round(x / 10**exponent, 2)
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{mantissa:g}e{exponent}"


def log_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Tick values s x 10^e inside [low, high]: powers of ten, else 1-2-5, else 1..9, else with 1.5 and
    2.5 too — the first set with at least two inside — thinned to at most `most`. Computed here rather
    than by matplotlib's LogLocator, which falls back to linear ticks (1.25e6, 1.5e6, ...) on a span
    under a decade."""
    first, last = math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1
    ticks: list[float] = []
    halves = (1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)
    for subs in ((1,), (1, 2, 5), tuple(range(1, 10)), halves):
        ticks = [
            s * 10.0**e
            for e in range(first, last + 1)
            for s in subs
            if low * 0.999 <= s * 10.0**e <= high * 1.001
        ]
        if len(ticks) >= 2:
            break
    if len(ticks) < 2:  # a span inside one 1..9 step: its two ends
        ticks = [low, high]
    step = math.ceil(len(ticks) / most)
    return ticks[::step]


def log_axis(axis: Any, low: float, high: float) -> None:
    """Log scale with at least two labelled ticks inside [low, high] (`log_ticks`),
    labelled by `sci_label`."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    axis.set_major_locator(FixedLocator(log_ticks(low, high)))
    axis.set_major_formatter(FuncFormatter(sci_label))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def _span(values: Sequence[float], pad: float = 1.25) -> tuple[float, float]:
    return min(values) / pad, max(values) * pad


def _legend(ax: Any, title: str) -> None:
    ax.legend(
        title=title,
        fontsize=7,
        title_fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
    )


def plot_png(points: Sequence[Point], result: ScalingFit, title: str = "SPHINX-X scaling sweep") -> bytes:
    """The sweep's figure, PNG bytes."""
    return _png(lambda: figure(points, result, title))


def _png(draw: Any) -> bytes:
    """PNG bytes of the figure `draw()` returns (the Agg backend: no display needed), then closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def figure(points: Sequence[Point], result: ScalingFit, title: str = "SPHINX-X scaling sweep") -> Any:
    """The sweep's figure (a matplotlib Figure, drawn; tests inspect its texts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = list(result.domains.items())
    top_panels = 3 if result.form == "chinchilla" else 2
    height = 4.4 + (3.0 if domains else 0.0)
    fig = plt.figure(figsize=(5.2 * top_panels, height), layout="constrained")
    interval = (
        f", bands: {result.level:.0%} bootstrap intervals ({result.resamples_used} refits)"
        if result.samples
        else ""
    )
    fig.suptitle(f"{title}: L = {result.loss_key}{interval}\n{result.summary()}", fontsize=9)
    rows: Any = fig.subfigures(2, 1, height_ratios=[4.4, 3.0]) if domains else [fig]
    top = rows[0].subplots(1, top_panels)
    sizes = sorted({p.params for p in points})
    colors = {n: plt.get_cmap("viridis")(i / max(1, len(sizes) - 1) * 0.9) for i, n in enumerate(sizes)}
    _loss_vs_data(top[0], points, result, colors, legend=True)
    _loss_vs_params(top[1], points, result)
    if result.form == "chinchilla":
        _frontier(top[2], points, result)
    if domains:
        small = rows[1].subplots(1, len(domains), squeeze=False)[0]
        for ax, (domain, law) in zip(small, domains, strict=True):
            domain_points = [
                Point(p.params, p.data, p.observed, p.name)
                for p in law.points
                if not p.axis or p.axis == "data"
            ]
            _loss_vs_data(ax, domain_points or list(points), law, colors, legend=False)
            ax.set_title(f"{domain} ({law.form})", fontsize=8)
            ax.set_ylabel(law.loss_key, fontsize=7)
    fig.canvas.draw()
    return fig


def _loss_vs_data(
    ax: Any, points: Sequence[Point], result: ScalingFit, colors: dict[float, Any], legend: bool
) -> None:
    """Loss against D, one colour per model size, the law's curve and its band."""
    low, high = _span([p.data for p in points])
    grid = np.geomspace(low, high, 60)
    for size in sorted({p.params for p in points}):
        row = sorted((p for p in points if p.params == size), key=lambda p: p.data)
        color = colors.get(size, "C0")
        ax.plot(
            [p.data for p in row], [p.loss for p in row], "o", color=color, label=f"N = {sci_label(size)}"
        )
        if result.form == "chinchilla":
            ax.plot(grid, result.predict(size, grid), "-", color=color, alpha=0.8)
            if (b := band(result, functools.partial(_law, n=size, d=grid))) is not None:
                ax.fill_between(grid, b[0], b[1], color=color, alpha=0.15, linewidth=0)
    for law in result.per_axis:
        if law.axis == "data":
            ax.plot(grid, law.predict(grid), "--", color="gray", label="power law (largest N)")
            if (b := band(result, lambda c: c["data_coefficient"] * grid ** -c["data_slope"])) is not None:
                ax.fill_between(grid, b[0], b[1], color="gray", alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    log_axis(ax.xaxis, low, high)
    ax.set_xlabel(D_LABEL, fontsize=8)
    ax.set_ylabel(f"loss L ({result.loss_key})", fontsize=8)
    ax.tick_params(labelsize=7)
    if legend:
        ax.set_title("loss vs data, per model size", fontsize=9)
        _legend(ax, "model size")


def _loss_vs_params(ax: Any, points: Sequence[Point], result: ScalingFit) -> None:
    """Loss against N, one series per data fraction; the law at that fraction's mean D."""
    import matplotlib.pyplot as plt

    low, high = _span([p.params for p in points])
    grid = np.geomspace(low, high, 60)
    fractions = sorted({p.fraction for p in points})
    for i, fraction in enumerate(fractions):
        row = sorted((p for p in points if p.fraction == fraction), key=lambda p: p.params)
        color = plt.get_cmap("plasma")(i / max(1, len(fractions) - 1) * 0.85)
        mean_d = float(np.exp(np.mean(np.log([p.data for p in row]))))
        label = f"fraction {fraction:g} (D ~ {sci_label(mean_d)})" if fraction else f"D ~ {sci_label(mean_d)}"
        ax.plot([p.params for p in row], [p.loss for p in row], "s", color=color, label=label)
        if result.form == "chinchilla":
            ax.plot(grid, result.predict(grid, mean_d), "-", color=color, alpha=0.8)
            if (b := band(result, functools.partial(_law, n=grid, d=mean_d))) is not None:
                ax.fill_between(grid, b[0], b[1], color=color, alpha=0.15, linewidth=0)
    for law in result.per_axis:
        if law.axis == "params":
            ax.plot(grid, law.predict(grid), "--", color="gray", label="power law (largest D)")
            if (
                b := band(result, lambda c: c["params_coefficient"] * grid ** -c["params_slope"])
            ) is not None:
                ax.fill_between(grid, b[0], b[1], color="gray", alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    log_axis(ax.xaxis, low, high)
    ax.set_xlabel(N_LABEL, fontsize=8)
    ax.set_ylabel(f"loss L ({result.loss_key})", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title("loss vs model size, per data fraction", fontsize=9)
    _legend(ax, "data")


def _law(c: dict[str, float], n: Any, d: Any) -> Any:
    return c["E"] + c["A"] / np.asarray(n) ** c["alpha"] + c["B"] / np.asarray(d) ** c["beta"]


def _frontier(ax: Any, points: Sequence[Point], result: ScalingFit) -> None:
    """Iso-loss contours over (N, D), iso-compute lines and the compute-optimal frontier."""
    n_low, n_high = _span([p.params for p in points], 2.0)
    d_low, d_high = _span([p.data for p in points], 2.0)
    nn, dd = np.meshgrid(np.geomspace(n_low, n_high, 120), np.geomspace(d_low, d_high, 120))
    contours = ax.contourf(nn, dd, result.predict(nn, dd), levels=12, cmap="Greys", alpha=0.55)
    colorbar = ax.figure.colorbar(contours, ax=ax, pad=0.02)
    colorbar.set_label(f"fitted L ({result.loss_key})", fontsize=7)
    colorbar.ax.tick_params(labelsize=6)
    ax.scatter(
        [p.params for p in points], [p.data for p in points], c="C0", s=18, zorder=3, label="sweep points"
    )
    optimal = result.compute_optimal()
    flops = np.geomspace(6 * n_low * d_low, 6 * n_high * d_high, 200)
    if optimal is not None:
        n_opt = optimal["G"] * (flops / 6) ** optimal["a"]
        ax.plot(
            n_opt,
            flops / 6 / n_opt,
            "-",
            color="C3",
            lw=2,
            label=f"compute-optimal: N ~ C^{optimal['a']:.2f}",
        )
    for c in np.geomspace(6 * n_low * d_low, 6 * n_high * d_high, 6)[1:-1]:
        ns = np.geomspace(n_low, n_high, 50)
        ax.plot(ns, c / 6 / ns, ":", color="C1", lw=0.8)
    ax.plot([], [], ":", color="C1", lw=0.8, label="iso-compute C = 6ND")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(n_low, n_high)
    ax.set_ylim(d_low, d_high)
    log_axis(ax.xaxis, n_low, n_high)
    log_axis(ax.yaxis, d_low, d_high)
    ax.set_xlabel(N_LABEL, fontsize=8)
    ax.set_ylabel(D_LABEL, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title("iso-loss contours and compute-optimal frontier", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=2, frameon=False)


# ------------------------------------------------------------------ a benchmark against N, D and C

C_LABEL = "training compute C = 6 N D (FLOPs)"


def benchmark_png(points: Sequence[ScorePoint], trend: BenchmarkTrend, title: str = "") -> bytes:
    """One benchmark's figure, PNG bytes: see `benchmark_figure`."""
    return _png(lambda: benchmark_figure(points, trend, title))


def benchmark_figure(points: Sequence[ScorePoint], trend: BenchmarkTrend, title: str = "") -> Any:
    """Score against C (the logistic trend and its bootstrap band), against N (one series per data
    fraction, the trend at that fraction's mean D) and against D (one series per model size, the
    trend at that N). Without a trend the points alone, and the reason in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(15.6, 4.6), layout="constrained")
    what = trend.summary if trend.form else f"{trend.benchmark}: no trend ({trend.reason})"
    band = (
        f", band: {trend.uncertainty.level:.0%} bootstrap ({trend.uncertainty.used} refits)"
        if trend.uncertainty and trend.band
        else ""
    )
    fig.suptitle(
        f"{title}{': ' if title else ''}{trend.benchmark} ({trend.metric}){band}\n{what}", fontsize=9
    )
    axes = fig.subplots(1, 3)
    coefficients = {e.name: e.value for e in trend.estimates if e.value is not None}
    curve = functools.partial(_trend, coefficients) if len(coefficients) == 4 else None
    sizes = sorted({p.params for p in points})
    colors = {n: plt.get_cmap("viridis")(i / max(1, len(sizes) - 1) * 0.9) for i, n in enumerate(sizes)}
    _score_vs_compute(axes[0], points, trend, colors)
    _score_vs_axis(axes[1], points, curve, "params", [("fraction", p.fraction) for p in points])
    _score_vs_axis(axes[2], points, curve, "data", [("N", p.params) for p in points], colors)
    for ax in axes:
        ax.set_ylabel(f"{trend.benchmark} ({trend.metric})", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.canvas.draw()
    return fig


def _trend(c: dict[str, float], compute: Any) -> Any:
    z = np.clip(c["slope"] * (np.log10(compute) - c["midpoint"]), -60.0, 60.0)
    return c["floor"] + (c["ceiling"] - c["floor"]) / (1.0 + np.exp(-z))


def _score_vs_compute(ax: Any, points: Sequence[ScorePoint], trend: BenchmarkTrend, colors: dict) -> None:
    for size in sorted(colors):
        row = [p for p in points if p.params == size]
        ax.plot([p.compute for p in row], [p.score for p in row], "o", color=colors[size],
                label=f"N = {sci_label(size)}")  # fmt: skip
    if trend.band:
        grid = [b.compute for b in trend.band]
        ax.plot(grid, [b.predicted for b in trend.band], "-", color="C3", label="logistic in log10 C")
        if all(b.low is not None and b.high is not None for b in trend.band):
            ax.fill_between(grid, [b.low for b in trend.band], [b.high for b in trend.band], color="C3",
                            alpha=0.15, linewidth=0, label="bootstrap band")  # fmt: skip
    low, high = _span([p.compute for p in points])
    ax.set_xscale("log")
    log_axis(ax.xaxis, low, high)
    ax.set_xlabel(C_LABEL, fontsize=8)
    ax.set_title("score vs compute, per model size", fontsize=9)
    _legend(ax, "model size")


def _score_vs_axis(
    ax: Any, points: Sequence[ScorePoint], curve: Any, axis: str, series: list[tuple[str, float]],
    colors: dict | None = None,
) -> None:  # fmt: skip
    """Score against N (`axis` "params", one series per fraction) or D (one series per model size)."""
    import matplotlib.pyplot as plt

    low, high = _span([getattr(p, axis) for p in points])
    grid = np.geomspace(low, high, 60)
    keys = sorted({value for _, value in series})
    for i, key in enumerate(keys):
        row = sorted(
            (p for p, (_, v) in zip(points, series, strict=True) if v == key), key=lambda p: getattr(p, axis)
        )
        color = (colors or {}).get(key) or plt.get_cmap("plasma")(i / max(1, len(keys) - 1) * 0.85)
        if axis == "params":
            other = float(np.exp(np.mean(np.log([p.data for p in row]))))
            label = f"fraction {key:g} (D ~ {sci_label(other)})" if key else f"D ~ {sci_label(other)}"
        else:
            other, label = key, f"N = {sci_label(key)}"
        ax.plot([getattr(p, axis) for p in row], [p.score for p in row], "s" if axis == "params" else "o",
                color=color, label=label)  # fmt: skip
        if curve is not None:
            ax.plot(grid, curve(6.0 * grid * other), "-", color=color, alpha=0.7)
    ax.set_xscale("log")
    log_axis(ax.xaxis, low, high)
    ax.set_xlabel(N_LABEL if axis == "params" else D_LABEL, fontsize=8)
    what = "model size, per data fraction" if axis == "params" else "data, per model size"
    ax.set_title(f"score vs {what}", fontsize=9)
    _legend(ax, "data" if axis == "params" else "model size")
