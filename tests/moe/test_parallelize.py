"""DeepSpeed on 2 gloo processes (EP 2 + ZeRO-2/1, EP 1 + ZeRO-3): one AdamW step equals plain torch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sphinxx.jobs.parallelize import deepspeed_config, optimizer_param_groups
from sphinxx.model.expert_parallel import expert_range
from sphinxx.model.moe import MoE, MoEArgs
from tests import ranks

H, F, E, K, WORLD, EP = 64, 128, 8, 2, 2, 2
ADAMW = {"lr": 1e-2, "betas": (0.9, 0.95), "eps": 1e-3}  # eps large enough that the step depends on |grad|
WEIGHT_DECAY, GRAD_CLIP = 0.1, 0.05


class TinyMoENet(nn.Module):
    """Dense layer (with a bias: the no-decay group), an MoE layer, a dense head."""

    def __init__(self, ep_size: int):
        super().__init__()
        self.proj = nn.Linear(H, H)
        self.moe = MoE(MoEArgs(H, F, num_experts=E, top_k=K, kernel="grouped", ep_size=ep_size))
        self.head = nn.Linear(H, 4, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.proj(x)
        y, aux = self.moe(h)
        return self.head(h + y), aux


def _full_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in TinyMoENet(ep_size=1).state_dict().items()}


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(WORLD, 2, 12, H, generator=gen), torch.randn(WORLD, 2, 12, 4, generator=gen)


def _loss(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    out, aux = model(x)
    return (out - target).square().mean() + aux


def _reference_step(expert_grad_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """One process, EP = 1, the data-parallel loss mean_r L_r, clip, torch AdamW."""
    model = TinyMoENet(ep_size=1)
    model.load_state_dict(_full_state())
    x, target = _batch()
    loss = sum(_loss(model, x[r], target[r]) for r in range(WORLD)) / WORLD
    loss.backward()
    for p in model.moe.experts.parameters():
        p.grad.mul_(expert_grad_scale)
    nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    groups = [
        {"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0},
    ]
    torch.optim.AdamW(groups, **ADAMW).step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _one_step(rank: int, ep_size: int, zero_stage: int) -> dict[str, torch.Tensor]:
    """Build, parallelize, initialize and take one DeepSpeed step; return this rank's full params."""
    import deepspeed
    from deepspeed.runtime.engine import DeepSpeedEngine

    from sphinxx.jobs.parallelize import initialize, parallelize

    original = DeepSpeedEngine._configure_distributed_model
    model = TinyMoENet(ep_size=ep_size)
    mine = expert_range(E, ep_size, rank % ep_size)
    rows = slice(mine.start * F, mine.stop * F)
    model.load_state_dict({k: v[rows] if ".experts." in k else v for k, v in _full_state().items()})
    ep = parallelize(model, ep_size=ep_size, zero_stage=zero_stage)
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, WEIGHT_DECAY), **ADAMW)
    config = deepspeed_config(
        zero_stage=zero_stage, micro_batch=2, precision="fp32", grad_clip=GRAD_CLIP, ep_size=ep_size
    )
    engine = initialize(model, optimizer, config, ep)
    assert DeepSpeedEngine._configure_distributed_model is original  # the shim is scoped
    x, target = _batch()
    engine.backward(_loss(engine, x[rank], target[rank]))
    engine.step()
    with deepspeed.zero.GatheredParameters(list(model.parameters()), enabled=zero_stage == 3):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, port: int) -> None:
    os.environ.update(
        DS_ACCELERATOR="cpu",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    from sphinxx.jobs.parallelize import init_distributed

    init_distributed("gloo")
    expected = _reference_step()
    # The comparison can see a wrong expert-gradient scale (e.g. EP x too large, the pre-#6546 bug).
    doubled = _reference_step(expert_grad_scale=2.0)
    for n in ("w1", "v1", "w2"):
        key = f"moe.experts.mlp.{n}"
        assert not torch.allclose(doubled[key], expected[key], rtol=1e-5, atol=1e-6)
    # EP = 2 with ZeRO-2 (the Mixtral default) and ZeRO-1; EP = 1 with ZeRO-3 (experts as ordinary params).
    for ep_size, zero_stage in ((EP, 2), (EP, 1), (1, 3)):
        got = _one_step(rank, ep_size, zero_stage)
        mine = expert_range(E, ep_size, rank % ep_size)
        rows = slice(mine.start * F, mine.stop * F)
        for name, value in expected.items():
            want = value[rows] if ".experts." in name else value
            assert_close(
                got[name],
                want,
                rtol=1e-5,
                atol=1e-6,
                msg=f"EP {ep_size} ZeRO-{zero_stage}: {name} after one step",
            )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_deepspeed_step_equals_single_process_adamw() -> None:
    """EP 2 + ZeRO-2, EP 2 + ZeRO-1, EP 1 + ZeRO-3 on 2 gloo ranks, each vs the same reference step."""
    ranks.start(_worker, (_free_port(),), WORLD)


def test_config_rejects_ep_with_zero3_and_marks_moe_groups() -> None:
    with pytest.raises(ValueError, match="ZeRO stage 1 or 2"):
        deepspeed_config(zero_stage=3, micro_batch=1, ep_size=2)
    cfg = deepspeed_config(zero_stage=2, micro_batch=1, ep_size=2)
    assert cfg["zero_optimization"]["contiguous_gradients"] and cfg["zero_optimization"]["reduce_scatter"]
    model = TinyMoENet(ep_size=2)
    from sphinxx.model.expert_parallel import mark_expert_params

    mark_expert_params(list(model.moe.experts.parameters()), "ep_size_2")
    groups = optimizer_param_groups(model, WEIGHT_DECAY)
    moe_groups = [g for g in groups if g.get("moe")]
    assert [g["name"] for g in moe_groups] == ["ep_size_2"]
    assert {id(p) for p in moe_groups[0]["params"]} == {id(p) for p in model.moe.experts.parameters()}
    assert moe_groups[0]["weight_decay"] == WEIGHT_DECAY
