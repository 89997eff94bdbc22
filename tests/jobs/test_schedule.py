"""The learning-rate schedule: warmup, cosine / linear / constant decay, by optimizer step."""

from __future__ import annotations

import math

import pytest

from sphinxx.jobs.schedule import Schedule, lr_at, warmup_steps


def test_warmup_then_cosine_to_min() -> None:
    total, peak, floor = 100, 1e-3, 1e-5
    assert warmup_steps(total, 0.1) == 10
    lrs = [lr_at(s, total, peak, floor, 0.1) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / 10)
    assert lrs[9] == pytest.approx(peak)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10], strict=False))  # increasing warmup
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))  # non-increasing decay
    assert lrs[-1] == pytest.approx(floor)
    # Mid-decay equals the cosine formula, computed independently here.
    mid = 10 + (total - 10 - 1) / 2
    assert lr_at(int(mid), total, peak, floor, 0.1) == pytest.approx(
        floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * (int(mid) - 10) / 89))
    )


def test_linear_and_constant_and_errors() -> None:
    assert lr_at(99, 100, 1.0, 0.0, 0.0, "linear") == pytest.approx(0.0)
    assert lr_at(50, 100, 1.0, 0.0, 0.0, "linear") == pytest.approx(1 - 50 / 99)
    assert lr_at(70, 100, 1.0, 0.0, 0.1, "constant") == 1.0
    assert Schedule(10, 1.0, kind="cosine")(0) == 1.0  # no warmup: first step at peak
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 10, 1.0, 0.0, 0.0, "step")
    with pytest.raises(ValueError, match="outside"):
        lr_at(10, 10, 1.0, 0.0, 0.0)
