"""Global coordinates of parameters and expert slices, and optimizer fragments filled by overlap."""

from __future__ import annotations

import pytest
import torch

from tests.jobs._tiny import TINY_MOE


def test_expert_params_get_global_coordinates() -> None:
    """An EP rank's expert slice maps to its rows of the full tensor and to global expert ids."""
    from sphinxx.jobs.checkpoint.fragments import expert_split, param_slots
    from sphinxx.model.expert_parallel import ExpertParallel
    from sphinxx.model.flavors import get_flavor
    from sphinxx.model.llm import Transformer
    from sphinxx.model.moe import MoE

    full = Transformer(get_flavor("debug-moe", **TINY_MOE))
    sliced = Transformer(get_flavor("debug-moe", **TINY_MOE, ep_size=2))
    for moe in (m for m in sliced.modules() if isinstance(m, MoE)):
        moe.ep = ExpertParallel(group=None, size=2, rank=1)  # as attach_expert_parallel sets it
    slots = {s.name: s for s in param_slots(sliced)}
    w1 = slots["layers.0.moe.experts.mlp.w1"]
    assert w1.global_shape == tuple(full.layers[0].moe.experts.mlp.w1.shape)
    assert (w1.expert_first, w1.num_local_experts, w1.offset) == (2, 2, w1.param.numel())
    assert slots["layers.0.attention.wq.weight"].expert_first == -1
    parts = expert_split(w1, w1.param.detach())
    assert sorted(parts) == [2, 3] and parts[3].shape == (16, 32)  # moe_ffn_dim rows per expert


def test_fragments_fill_by_overlap_and_refuse_gaps() -> None:
    from sphinxx.jobs.checkpoint.fragments import Fragment, _fill, _require

    full = torch.arange(10.0)
    frags = [Fragment("w", 0, 4, {"exp_avg": full[0:4]}), Fragment("w", 4, 6, {"exp_avg": full[4:10]})]
    target = torch.zeros(5)  # a rank that now owns [3, 8): spans both saved fragments
    assert _fill(target, 3, frags, "exp_avg") == 5
    assert target.tolist() == [3.0, 4.0, 5.0, 6.0, 7.0]
    with pytest.raises(ValueError, match="holds 4 of 5"):
        _require(_fill(torch.zeros(5), 0, frags[:1], "exp_avg"), 5, "w", "exp_avg")


def test_without_zero_a_rank_owns_whole_trainable_tensors_at_their_ep_offset() -> None:
    from sphinxx.jobs.checkpoint.fragments import owned_ranges, param_slots

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    model[1].requires_grad_(False)  # frozen: nothing to restore into the optimizer
    assert owned_ranges(param_slots(model)) == {"0.weight": [(0, 6)], "0.bias": [(0, 2)]}


def test_lazy_adam_state_is_created_and_its_step_round_trips() -> None:
    """ensure_optimizer_state creates the lazy Adam state a restore fills; the step round-trips."""
    from sphinxx.jobs.checkpoint.fragments import adam_step, ensure_optimizer_state, set_adam_step

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    assert adam_step(optimizer) == 0 and not optimizer.state
    ensure_optimizer_state(optimizer)
    assert all(torch.equal(optimizer.state[p]["exp_avg"], torch.zeros_like(p)) for p in model.parameters())
    set_adam_step(optimizer, 7)
    assert adam_step(optimizer) == 7
