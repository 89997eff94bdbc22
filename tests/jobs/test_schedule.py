"""Step arithmetic: batch dealing at any world size and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sphinxx.jobs.schedule import Schedule, batch_plan, lr_at, total_steps, warmup_steps


@given(
    global_batch=st.integers(1, 300),
    micro=st.integers(1, 16),
    world=st.integers(1, 32),
)
def test_batch_plan_deals_every_sample_once(global_batch: int, micro: int, world: int) -> None:
    if global_batch < world:
        with pytest.raises(ValueError, match="global_batch"):
            batch_plan(global_batch, micro, world)
        return
    plan = batch_plan(global_batch, micro, world)
    sizes = [plan.micro_sizes(r) for r in range(world)]
    # Equal number of micro-steps on every rank (collectives), none larger than micro.
    assert all(len(s) == plan.accum for s in sizes)
    assert all(0 <= x <= micro for s in sizes for x in s)
    assert sum(map(sum, sizes)) == global_batch
    # Contiguous rank slices tile the global batch exactly.
    slices = [plan.rank_slice(r) for r in range(world)]
    assert slices[0][0] == 0 and slices[-1][1] == global_batch
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:], strict=False))
    # accum is the smallest number of micro-steps that fits the largest share.
    assert plan.accum == math.ceil(math.ceil(global_batch / world) / micro)


def test_batch_plan_paper_recipe() -> None:
    # 256 sequences on 32 GPUs with micro 4: 2 accumulation steps; on 16 GPUs: 4.
    assert batch_plan(256, 4, 32).accum == 2
    assert batch_plan(256, 4, 16).accum == 4
    assert batch_plan(8, 2, 2).micro_sizes(1) == [2, 2]
    assert batch_plan(8, 2, 3).micro_sizes(2) == [2, 0]  # shares 3, 3, 2


def test_total_steps() -> None:
    assert total_steps(50, 10, 1.0, 8) == 50
    assert total_steps(0, 15_300_000, 1.0, 256) == 59_766  # sphinx_x_model.md 10: ~59.8k steps
    with pytest.raises(ValueError, match="empty"):
        total_steps(0, 0, 1.0, 8)


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
