"""DeepSpeed ZeRO-2 on 2 gloo processes with EP = 2: one AdamW step equals plain torch on one process."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.testing import assert_close

from sphinxx.jobs.parallelize import deepspeed_config, optimizer_param_groups
from sphinxx.model.expert_parallel import expert_range
from sphinxx.model.moe import MoE, MoEArgs

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


def _worker(rank: int, port: int) -> None:
    os.environ.update(
        DS_ACCELERATOR="cpu",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    import deepspeed

    from sphinxx.jobs.parallelize import initialize, parallelize

    deepspeed.init_distributed(dist_backend="gloo")
    model = TinyMoENet(ep_size=EP)
    mine = expert_range(E, EP, rank % EP)
    rows = slice(mine.start * F, mine.stop * F)
    model.load_state_dict({k: v[rows] if ".experts." in k else v for k, v in _full_state().items()})
    ep = parallelize(model, ep_size=EP, zero_stage=2)
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, WEIGHT_DECAY), **ADAMW)
    config = deepspeed_config(zero_stage=2, micro_batch=2, precision="fp32", grad_clip=GRAD_CLIP, ep_size=EP)
    engine = initialize(model, optimizer, config, ep)

    x, target = _batch()
    engine.backward(_loss(engine, x[rank], target[rank]))
    engine.step()

    expected = _reference_step()
    got = model.state_dict()
    for name, value in expected.items():
        want = value[rows] if ".experts." in name else value
        assert_close(got[name], want, rtol=1e-5, atol=1e-6, msg=f"{name} after one step")
    # The comparison can see a wrong expert-gradient scale (e.g. EP x too large, the pre-#6546 bug).
    doubled = _reference_step(expert_grad_scale=2.0)
    for n in ("w1", "v1", "w2"):
        key = f"moe.experts.mlp.{n}"
        assert not torch.allclose(doubled[key], expected[key], rtol=1e-5, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_zero2_ep2_step_equals_single_process_adamw() -> None:
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=True)


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
