"""State-dict adapter between Hugging Face Mixtral MoE blocks and our ``MoE`` layer.

The only place that knows Hugging Face's Mixtral expert names
(``docs/architecture.md, "Conventions the code follows"`` habit 5).
Layouts (docs/moe.md, "Weight conversion from Hugging Face Mixtral"; transformers 5.24
``models/mixtral/modeling_mixtral.py`` and ``conversion_mapping.py``):

- transformers 4.x and the Hub safetensors files (per expert)::

    {prefix}block_sparse_moe.gate.weight            [E, H]
    {prefix}block_sparse_moe.experts.{e}.w1.weight  [F, H]   gate_proj
    {prefix}block_sparse_moe.experts.{e}.w3.weight  [F, H]   up_proj
    {prefix}block_sparse_moe.experts.{e}.w2.weight  [H, F]   down_proj

- transformers 5.x in memory (fused at load time)::

    {prefix}mlp.gate.weight                         [E, H]
    {prefix}mlp.experts.gate_up_proj                [E, 2F, H]  gate rows first, then up
    {prefix}mlp.experts.down_proj                   [E, H, F]

Ours: ``router.layer.weight`` [E, H]; ``experts.mlp.w1`` = concat_e W1_e, ``v1`` = concat_e W3_e,
``w2`` = concat_e W2_e^T, all [E_local * F, H] along dim 0. ``get`` may be a lazy mapping (e.g. over
``safetensors.safe_open``): with the 4.x layout only the rank's own experts are read.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sphinxx.model.expert_parallel import expert_range

LAYOUTS = ("4.x", "5.x")


def _layout_of(get: Mapping[str, torch.Tensor], prefix: str) -> str:
    if f"{prefix}block_sparse_moe.gate.weight" in get:
        return "4.x"
    if f"{prefix}mlp.gate.weight" in get and f"{prefix}mlp.experts.gate_up_proj" in get:
        return "5.x"
    raise KeyError(
        f"no Mixtral MoE block under prefix {prefix!r}: expected '{prefix}block_sparse_moe.gate.weight' "
        f"(transformers 4.x / Hub files) or '{prefix}mlp.gate.weight' + '{prefix}mlp.experts.gate_up_proj' "
        "(transformers 5.x)"
    )


def mixtral_experts_from_hf(
    get: Mapping[str, torch.Tensor],
    hf_layer_prefix: str,
    num_experts: int,
    ep_rank: int = 0,
    ep_size: int = 1,
) -> dict[str, torch.Tensor]:
    """Our MoE-relative state dict for EP rank ``ep_rank`` of ``ep_size`` from one HF Mixtral layer.

    ``hf_layer_prefix`` ends with a dot, e.g. ``"model.layers.3."``. The router is replicated on
    every rank; expert rows are those of :func:`expert_range`.
    """
    experts = expert_range(num_experts, ep_size, ep_rank)
    layout = _layout_of(get, hf_layer_prefix)
    if layout == "4.x":
        base = f"{hf_layer_prefix}block_sparse_moe."
        router = get[f"{base}gate.weight"]
        w1 = [get[f"{base}experts.{e}.w1.weight"] for e in experts]
        v1 = [get[f"{base}experts.{e}.w3.weight"] for e in experts]
        w2 = [get[f"{base}experts.{e}.w2.weight"].t() for e in experts]
    else:
        base = f"{hf_layer_prefix}mlp."
        router = get[f"{base}gate.weight"]
        gate_up = get[f"{base}experts.gate_up_proj"][experts.start : experts.stop]  # [E_l, 2F, H]
        down = get[f"{base}experts.down_proj"][experts.start : experts.stop]  # [E_l, H, F]
        ffn = gate_up.shape[1] // 2
        w1 = list(gate_up[:, :ffn])
        v1 = list(gate_up[:, ffn:])
        w2 = list(down.transpose(1, 2))
    if router.shape[0] != num_experts:
        raise ValueError(f"router has {router.shape[0]} experts, expected num_experts={num_experts}")
    return {
        "router.layer.weight": router.clone(),
        "experts.mlp.w1": torch.cat(w1, dim=0).contiguous(),
        "experts.mlp.v1": torch.cat(v1, dim=0).contiguous(),
        "experts.mlp.w2": torch.cat(w2, dim=0).contiguous(),
    }


def mixtral_experts_to_hf(
    moe_state: Mapping[str, torch.Tensor],
    hf_layer_prefix: str,
    layout: str = "4.x",
    first_expert: int = 0,
    num_local_experts: int | None = None,
) -> dict[str, torch.Tensor]:
    """HF keys from our MoE-relative state dict (the reverse of :func:`mixtral_experts_from_hf`).

    For an EP slice pass ``first_expert`` (its first global expert id) and ``num_local_experts``
    (4.x layout only: the fused 5.x tensors need every expert). The router is written as is.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    router = moe_state["router.layer.weight"]
    num_local = router.shape[0] if num_local_experts is None else num_local_experts
    w1, v1, w2 = (moe_state[f"experts.mlp.{n}"] for n in ("w1", "v1", "w2"))
    if w1.shape[0] % num_local:
        raise ValueError(f"expert rows {w1.shape[0]} not divisible by num_local_experts={num_local}")
    w1, v1, w2 = (w.view(num_local, -1, w.shape[-1]) for w in (w1, v1, w2))  # [E_l, F, H]
    if layout == "4.x":
        base = f"{hf_layer_prefix}block_sparse_moe."
        out = {f"{base}gate.weight": router.clone()}
        for i in range(num_local):
            e = first_expert + i
            out[f"{base}experts.{e}.w1.weight"] = w1[i].clone()
            out[f"{base}experts.{e}.w3.weight"] = v1[i].clone()
            out[f"{base}experts.{e}.w2.weight"] = w2[i].t().contiguous()
        return out
    if first_expert != 0 or num_local != router.shape[0]:
        raise ValueError("the 5.x layout fuses all experts in one tensor: export the full set of experts")
    base = f"{hf_layer_prefix}mlp."
    return {
        f"{base}gate.weight": router.clone(),
        f"{base}experts.gate_up_proj": torch.cat([w1, v1], dim=1).contiguous(),
        f"{base}experts.down_proj": w2.transpose(1, 2).contiguous(),
    }
