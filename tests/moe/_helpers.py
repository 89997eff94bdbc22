"""Shared builders for the MoE tests: a transformers Mixtral block and our layer on the same weights."""

from __future__ import annotations

import torch
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from sphinxx.model.moe import MoE, MoEArgs
from sphinxx.model.moe_convert import mixtral_experts_from_hf

H, F, E, K = 64, 128, 8, 2
PREFIX = "model.layers.0."


def hf_block(seed: int = 0, std: float = 0.1, dtype: torch.dtype = torch.float32) -> MixtralSparseMoeBlock:
    """Eager transformers 5.x Mixtral block with random weights (the independent reference)."""
    cfg = MixtralConfig(hidden_size=H, intermediate_size=F, num_local_experts=E, num_experts_per_tok=K)
    cfg._experts_implementation = "eager"  # the per-expert loop, not transformers' own grouped_mm
    block = MixtralSparseMoeBlock(cfg).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)
    return block


def hf_state(block: MixtralSparseMoeBlock) -> dict[str, torch.Tensor]:
    """The block's 5.x state dict under a full-model layer prefix."""
    return {f"{PREFIX}mlp.{k}": v.detach().clone() for k, v in block.state_dict().items()}


def ours_from(state: dict[str, torch.Tensor], ep_rank: int = 0, ep_size: int = 1, **kw) -> MoE:
    moe = MoE(MoEArgs(H, F, num_experts=E, top_k=K, ep_size=ep_size, **kw))
    moe.load_state_dict(mixtral_experts_from_hf(state, PREFIX, E, ep_rank=ep_rank, ep_size=ep_size))
    return moe
