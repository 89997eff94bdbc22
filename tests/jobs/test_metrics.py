"""Trainable parameters, expert load, MFU."""

from __future__ import annotations

import pytest
import torch

from tests.jobs._tiny import TINY_MOE


def _model(flavor: str, *overrides: str):
    """The model the job builds for `flavor` (towers frozen), at the flavor's own size."""
    from sphinxx.jobs.build import build_model
    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.schema.run import load_config

    cfg = load_config(preset=flavor, overrides=["storage.uri=file:///tmp/unused", *overrides])
    return build_model(cfg, Worker())[0]


def test_trainable_params_count_every_expert_not_this_ranks_slice() -> None:
    from sphinxx.jobs.metrics import trainable_params
    from sphinxx.model.flavors import build_sphinx

    full = build_sphinx("debug-moe", **TINY_MOE)
    sliced = build_sphinx("debug-moe", **TINY_MOE, ep_size=2)
    for m in (full, sliced):
        m.vision.requires_grad_(False)
    local = sum(p.numel() for p in sliced.parameters() if p.requires_grad)
    assert trainable_params(sliced) == trainable_params(full) > local
    assert trainable_params(_model("debug")) == sum(p.numel() for p in _model("debug").parameters() if p.requires_grad)


def test_expert_load_shares_and_imbalance() -> None:
    from sphinxx.jobs.metrics import expert_load

    layer = torch.nn.Module()
    layer.tokens_per_expert = torch.tensor([3.0, 1.0])
    model = torch.nn.Sequential(layer)
    out = expert_load(model)
    assert out == {"moe/expert0_share": 0.75, "moe/expert1_share": 0.25, "moe/imbalance": 1.5}
    assert expert_load(torch.nn.Linear(2, 2)) == {}


def test_mfu_is_achieved_over_peak_flops_of_the_world() -> None:
    from sphinxx.jobs.metrics import FlopModel, StepStats

    flops = FlopModel(per_token=10.0, per_image_token=4.0, per_view=100.0, peak=1000.0)
    stats = StepStats(0.0, 1.0, 1.0, 0.0, 5, tokens=20, samples=2, image_tokens=5, views=1, skipped_views=0)
    # (10 * 20 + 4 * 5 + 100 * 1) FLOPs in 0.5 s on 2 devices of 1000 FLOP/s.
    assert flops.mfu(stats, 0.5, 2) == pytest.approx(640 / 2000)
