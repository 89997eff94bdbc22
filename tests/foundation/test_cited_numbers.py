"""Figures quoted in the README and docs are the ones in the result files they cite.

Each check reads the number out of the page's sentence and the value out of `bench/results/`,
so a re-run of a benchmark that changes its result fails here until the page is updated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _summary(name: str) -> dict:
    rows = [json.loads(line) for line in (ROOT / "bench" / "results" / name).read_text().splitlines() if line]
    return next(r for r in rows if r["kind"] == "summary")


def _timing(name: str, impl: str) -> dict:
    rows = [json.loads(line) for line in (ROOT / "bench" / "results" / name).read_text().splitlines() if line]
    return next(r for r in rows if r["kind"] == "timing" and r["impl"] == impl)


def _quoted(page: str, pattern: str) -> tuple[str, ...]:
    text = " ".join((ROOT / page).read_text().split())  # sentences wrap across lines
    match = re.search(pattern, text)
    assert match, f"{page}: no sentence matches {pattern!r}"
    return match.groups()


def _metric(name: str, metric: str) -> dict:
    rows = [json.loads(line) for line in (ROOT / "bench" / "results" / name).read_text().splitlines() if line]
    return next(r for r in rows if r.get("metric") == metric)


MOE = "gpu_moe_h200.jsonl"
LIVE = "operator_live_100.jsonl"
LIVE_1000 = "operator_live_1000_shared_fs.jsonl"


def _speedup(name: str, flavor: str) -> float:
    rows = [json.loads(line) for line in (ROOT / "bench" / "results" / name).read_text().splitlines() if line]
    return next(r["speedup"] for r in rows if r["kind"] == "ratio" and r["flavor"] == flavor)


CHECKS = {
    "docs/model.md: KV cache speed-ups": (
        "docs/model.md",
        r"the cache was ([\d.]+)x faster for `debug` and ([\d.]+)x for `debug-moe`",
        lambda: (
            f"{_speedup('generate_cpu.jsonl', 'debug'):.2f}",
            f"{_speedup('generate_cpu.jsonl', 'debug-moe'):.2f}",
        ),
    ),
    "README: GPU MoE speed-ups": (
        "README.md",
        r"Speed-ups over transformers eager are ([\d.]+)x \(`megablocks`, (\d+) TFLOP/s\), "
        r"([\d.]+)x \(`grouped`\) and ([\d.]+)x \(transformers' own `grouped_mm`\)",
        lambda: (
            f"{_summary(MOE)['speedup_over_transformers_eager']['ours-megablocks-dmoe']:.2f}",
            f"{_timing(MOE, 'ours-megablocks-dmoe')['tflops']:.0f}",
            f"{_summary(MOE)['speedup_over_transformers_eager']['ours-grouped']:.2f}",
            f"{_summary(MOE)['speedup_over_transformers_eager']['transformers-grouped_mm']:.2f}",
        ),
    ),
    "docs/moe.md: interleaved speed-up and dMoE": (
        "docs/moe.md",
        r"([\d.]+)x eager \(the goal of 3x is not met\), MegaBlocks' own fused dMoE at EP = 1 ([\d.]+)x, "
        r"transformers' `grouped_mm` experts ([\d.]+)x",
        lambda: (
            f"{_summary('gpu_moe_local_h200.jsonl')['speedup_median']:.2f}",
            f"{_summary(MOE)['speedup_over_transformers_eager']['ours-megablocks-dmoe']:.2f}",
            f"{_summary(MOE)['speedup_over_transformers_eager']['transformers-grouped_mm']:.2f}",
        ),
    ),
    "docs/operator.md: live status at 1,000 points": (
        "docs/operator.md",
        r"`bench/results/operator_live_1000_shared_fs.jsonl`: a watch saw each point's `status.progress` "
        r"change at most ([\d.]+) s apart \(median ([\d.]+) s: `status_refresh_gap_max`\), and the oldest "
        r"`status.progress` was ([\d.]+) s old \(median ([\d.]+) s\); while the records moved, ([\d.]+) "
        r"status PATCHes and ([\d.]+) progress GETs a minute",
        lambda: (
            f"{_metric(LIVE_1000, 'status_refresh_gap_max')['value']:.1f}",
            f"{_metric(LIVE_1000, 'status_refresh_gap_max')['median']:.1f}",
            f"{_metric(LIVE_1000, 'status_progress_age_max')['value']:.1f}",
            f"{_metric(LIVE_1000, 'status_progress_age_max')['median']:.1f}",
            f"{_metric(LIVE_1000, 'live_status_patches')['value']:g}",
            f"{_metric(LIVE_1000, 'live_s3_reads')['by_kind']['progress_get']:g}",
        ),
    ),
    "docs/operator.md: live status cost": (
        "docs/operator.md",
        r"the operator sent ([\d.]+) status PATCHes a minute while the records moved and (\d+) once they "
        r"stopped, and made (\d+) progress-record GETs a minute, ([\d.]+) times the (\d+) checkpoint reads "
        r"a minute it already makes; the oldest `status.progress` was ([\d.]+) s old \(median ([\d.]+) s\)",
        lambda: (
            f"{_metric(LIVE, 'live_status_patches')['value']:g}",
            f"{_metric(LIVE, 'quiet_status_patches')['value']:g}",
            f"{_metric(LIVE, 'live_s3_reads')['by_kind']['progress_get']:g}",
            f"{_metric(LIVE, 'progress_vs_checkpoint_reads')['value']:g}",
            f"{_metric(LIVE, 'live_s3_reads')['by_kind']['other_get']:g}",
            f"{_metric(LIVE, 'status_progress_age_max')['value']:.1f}",
            f"{_metric(LIVE, 'status_progress_age_max')['median']:.1f}",
        ),
    ),
    "docs/training.md: packing": (
        "docs/training.md",
        r"padding was ([\d.]+)% of the computed positions packed against ([\d.]+)% padded, "
        r"and packed training ran at ([\d.]+)x the padded tokens/s",
        lambda: (
            f"{100 * _packing_ratio()['padded_fraction_packed']:.1f}",
            f"{100 * _packing_ratio()['padded_fraction_padded']:.1f}",
            f"{_packing_ratio()['tokens_per_s']:.2f}",
        ),
    ),
    "docs/training.md: worker memory at 15M records": (
        "docs/training.md",
        r"\| worker memory, RSS delta \| (\d+) MB \((\d+) MB\) \| (\d+) MB \((\d+) MB\) \|",
        lambda: tuple(
            f"{_scale(name, 'memory', f)['rss_delta_bytes'] / 1e6:.0f}"
            for name in (SCALE_BEFORE, SCALE)
            for f in (1.0, 0.5)
        ),
    ),
    "docs/training.md: start-up at 15M records": (
        "docs/training.md",
        r"\| start-up to the first micro-batch \| ([\d.]+) s \(([\d.]+) s\) \| ([\d.]+) s \(([\d.]+) s\) \|",
        lambda: tuple(
            f"{_scale(name, 'startup', f)['seconds']:.1f}"
            for name in (SCALE_BEFORE, SCALE)
            for f in (1.0, 0.5)
        ),
    ),
}
SCALE, SCALE_BEFORE = "data_scale_15m_cpu.jsonl", "data_scale_15m_cpu_before.jsonl"


def _scale(name: str, phase: str, fraction: float) -> dict:
    """bench/data_scale.py's row of `phase` at `fraction` (the Feistel order's, where there are two)."""
    rows = [json.loads(line) for line in (ROOT / "bench" / "results" / name).read_text().splitlines() if line]
    return next(
        r
        for r in rows
        if r.get("phase") == phase and r["fraction"] == fraction and r.get("order", "feistel") == "feistel"
    )


def _packing_ratio() -> dict:
    rows = [
        json.loads(line)
        for line in (ROOT / "bench" / "results" / "packing_cpu.jsonl").read_text().splitlines()
    ]
    return next(r for r in rows if r["kind"] == "ratio")


@pytest.mark.parametrize("check", list(CHECKS), ids=list(CHECKS))
def test_quoted_figures_match_their_result_files(check: str) -> None:
    page, pattern, expected = CHECKS[check]
    assert _quoted(page, pattern) == expected()


def test_the_async_checkpoint_figures_are_the_bench_result() -> None:
    rows = (ROOT / "bench" / "results" / "checkpoint_cpu.jsonl").read_text().splitlines()
    summary = next(r for r in map(json.loads, rows) if r.get("summary"))
    sync, stall, ratio = _quoted(
        "docs/storage.md", r"\| training stall per save \| ([\d.]+) s \| ([\d.]+) s \(([\d.]+) of sync"
    )
    assert float(sync) == round(summary["sync_stall_s"], 1)
    assert float(stall) == round(summary["async_stall_s"], 2)
    assert float(ratio) == round(summary["stall_ratio"], 3) and summary["goal_met"]
