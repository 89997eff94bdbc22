"""What a SPHINX-X flavor costs: parameters, visual tokens per image, FLOPs per token.

Why: sweep planning (memory, step time, token budgets) needs these numbers before any weights
exist. Everything is computed on the meta device, so `sphinxx model info mixtral-8x7b` needs no
memory and no checkpoint.

Parameter counts
- `llm`: the decoder (ours = the HF base models exactly, docs/model.md, "Flavors");
  `llm_active` counts each MoE layer's experts scaled by top_k / num_experts.
- `convnext`: transformers ConvNextModel built like open_clip `convnext_xxlarge`'s trunk:
  843,398,016 for the real tower. open_clip's `docs/model_profile.csv` lists 846.54M for the
  image tower; the difference, 3,145,728 = 3072 x 1024, is the CLIP projection `head.proj`
  (no bias), which SPHINX drops (it uses the 3072-channel map).
- `dinov2`: transformers Dinov2Model for `facebook/dinov2-giant`: 1,136,480,768, including the
  1370 x 1536 position table of the 518 px pretraining grid and the 1536-entry mask token. The
  DINOv2 README rounds ViT-g/14 to "1,100M".
- `projector` (Linear(4608, d) with bias + LayerNorm(d)) and `tags` (start_img, end_img, skip).
- trainable = llm + projector + tags; frozen = the two towers.

FLOPs (documented estimates, not measurements)
- LLM training per token (PaLM, arXiv 2204.02311 App. B): 6 N + 12 n_layers d T, with N the
  active decoder parameters without the embedding table (a lookup, no matmul) and T the length
  of the token's sequence. `flops` reports the 12 n_layers d factor on its own
  (`llm_attention_per_squared_length`): a sequence of real length T costs 6 N T + 12 L d T^2, so
  a measured step is counted from its real lengths (`sphinxx.jobs.metrics.FlopModel`), and the
  per-token total here is at the `seq_len` asked for (planning). The LM head is included in N
  as if applied at every position; we apply it only at target positions, so this slightly
  over-counts (the head's share is reported). Causal masking would halve the attention term;
  the convention does not, and neither do we.
- Projector: 4 P per image token (forward 2P + weight gradient 2P; no input gradient, the
  towers are frozen).
- Vision: forward only (frozen), per view: 2 x the multiply-accumulates of every conv and
  linear layer, counted by shape on the meta device, plus DINOv2 attention 4 T^2 d per layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sphinxx.model.anyres import AnyResConfig, image_slots, num_visual_tokens, slot_tokens
from sphinxx.model.flavors import build_sphinx, count_params
from sphinxx.model.sphinx import SphinxX
from sphinxx.model.vision import VisionEncoders
from sphinxx.schema.flavors import resolve

ASPECT_TABLE = ((1, 1), (4, 3), (16, 9), (2, 1), (1, 2), (3, 1), (1, 3))


def _numel(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_counts(model: SphinxX) -> dict[str, int]:
    """Per-component counts of a SphinxX (usually built on the meta device)."""
    llm_args = model.args.llm
    llm = _numel(model.llm)
    tags = sum(t.numel() for t in (model.start_img, model.end_img, model.skip_token) if t is not None)
    counts = {
        "llm": llm,
        "llm_active": count_params(llm_args, active=True),
        "llm_embedding": model.llm.tok_embeddings.weight.numel(),
        "llm_lm_head": model.llm.output.weight.numel(),
        "projector": _numel(model.projector),
        "tags": tags,
        "convnext": _numel(model.vision.convnext),
        "dinov2": _numel(model.vision.dinov2),
    }
    counts["trainable"] = llm + counts["projector"] + tags
    counts["frozen"] = counts["convnext"] + counts["dinov2"]
    counts["total"] = counts["trainable"] + counts["frozen"]
    counts["active_per_token"] = counts["llm_active"] + counts["projector"] + tags
    return counts


def _macs_by_shape(module: nn.Module, pixels: torch.Tensor) -> int:
    """Multiply-accumulates of every Conv2d / Linear in one forward, from output shapes (meta)."""
    total = 0

    def hook(mod: nn.Module, _inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            per_out = (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
            total += output.numel() * per_out
        elif isinstance(mod, nn.Linear):
            total += output.numel() * mod.in_features

    handles = [
        m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            module(pixels)
    finally:
        for h in handles:
            h.remove()
    return total


def vision_flops_per_view(vision: VisionEncoders) -> dict[str, int]:
    """Forward FLOPs of each tower for one view (towers built on the meta device)."""
    args = vision.args
    conv = 2 * _macs_by_shape(
        vision.convnext, torch.empty(1, 3, args.convnext_view_size, args.convnext_view_size, device="meta")
    )
    dino_linear = 2 * _macs_by_shape(
        vision.dinov2, torch.empty(1, 3, args.dino_view_size, args.dino_view_size, device="meta")
    )
    tokens, width = args.num_tokens, args.dinov2.hidden_size
    dino_attention = 4 * tokens * tokens * width * args.dinov2.num_layers  # QK^T and AV
    return {"convnext": conv, "dinov2": dino_linear + dino_attention}


def flops(model: SphinxX, counts: dict[str, int], seq_len: int) -> dict[str, Any]:
    llm = model.args.llm
    dense = counts["llm_active"] - counts["llm_embedding"]
    attention = 12 * llm.n_layers * llm.dim * seq_len
    vision = vision_flops_per_view(model.vision)
    per_view = vision["convnext"] + vision["dinov2"]
    return {
        "seq_len": seq_len,
        "llm_train_per_token": 6 * dense + attention,
        "llm_train_per_token_params_part": 6 * dense,
        "llm_train_per_token_attention_part": attention,
        "llm_attention_per_squared_length": 12 * llm.n_layers * llm.dim,
        "llm_lm_head_share_per_token": 6 * counts["llm_lm_head"],
        "projector_train_per_image_token": 4 * counts["projector"],
        "vision_forward_per_view": per_view,
        "vision_forward_per_view_convnext": vision["convnext"],
        "vision_forward_per_view_dinov2": vision["dinov2"],
        "formula": "LLM 6N + 12*n_layers*dim*T per token, T its sequence's length (PaLM); "
        "projector 4P per image token; vision forward 2*MACs",
    }


def image_info(width: int, height: int, config: AnyResConfig, per_view_flops: int) -> dict[str, Any]:
    slots = image_slots(width, height, config)
    real = sum(1 for s in slots if s == 1)
    return {
        "width": width,
        "height": height,
        "visual_tokens": slot_tokens(slots),
        "real_views": real,
        "skipped_views": len(slots) - real,
        "vision_forward_flops": real * per_view_flops,
    }


def model_info(
    flavor: str, image: tuple[int, int] | None = None, seq_len: int | None = None
) -> dict[str, Any]:
    """Everything `sphinxx model info` prints, as one JSON-ready dict."""
    spec = resolve(flavor)
    name = spec.name
    model = build_sphinx(name, device="meta")
    cfg = model.args.image
    counts = parameter_counts(model)
    cost = flops(model, counts, seq_len or model.args.llm.max_seq_len)
    out: dict[str, Any] = {
        "flavor": name,
        "paper_name": spec.paper_name,
        "llm_flavor": spec.name,
        "vision": spec.vision,
        "canvas": cfg.canvas,
        "grid": cfg.grid,
        "convnext_view_size": cfg.convnext_view_size,
        "use_skip_token": cfg.use_skip_token,
        "params": counts,
        "visual_tokens": {f"{w}:{h}": num_visual_tokens(w * 100, h * 100, cfg) for w, h in ASPECT_TABLE},
        "flops": cost,
    }
    if image is not None:
        out["image"] = image_info(*image, cfg, cost["vision_forward_per_view"])
    return out
