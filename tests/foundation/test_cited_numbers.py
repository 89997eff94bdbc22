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


MOE = "gpu_moe_h200.jsonl"


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
}


@pytest.mark.parametrize("check", list(CHECKS), ids=list(CHECKS))
def test_quoted_figures_match_their_result_files(check: str) -> None:
    page, pattern, expected = CHECKS[check]
    assert _quoted(page, pattern) == expected()
