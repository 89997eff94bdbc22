"""Named LLM flavors: the sweep's model-size axis values plus tiny CPU debug models.

Shapes follow the Hugging Face configs of each base (sphinx_x_model.md section 6.2). The names
match `spec.axes.models` of a ScalingSweep. `count_params` builds a flavor on the meta device,
so the published sizes can be checked (and shown by `sphinxx model info`) without memory.
"""

from __future__ import annotations

from dataclasses import fields, replace

from sphinxx.model.args import ModelArgs

LLM_FLAVORS: dict[str, ModelArgs] = {
    # vocab 4096: small enough for the synthetic test tokenizer; override with vocab_size=...
    "debug": ModelArgs(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=512, vocab_size=4096),
    "debug-moe": ModelArgs(
        dim=256,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim=512,
        vocab_size=4096,
        num_experts=8,
        top_k=2,
        moe_ffn_dim=128,
    ),
    # TinyLlama/TinyLlama-1.1B-intermediate-step-1195k-token-2.5T (SPHINX-Tiny)
    "tinyllama-1.1b": ModelArgs(
        dim=2048,
        n_layers=22,
        n_heads=32,
        n_kv_heads=4,
        ffn_dim=5632,
        vocab_size=32000,
        rope_theta=10000.0,
    ),
    # internlm/internlm2-7b (SPHINX-Intern2); HF dynamic RoPE scaling is inactive below 32768
    "internlm2-7b": ModelArgs(
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        ffn_dim=14336,
        vocab_size=92544,
        rope_theta=1_000_000.0,
        activation_checkpointing=True,
    ),
    # meta-llama/Llama-2-13b-hf (SPHINX-Plus, Plus-2K)
    "llama2-13b": ModelArgs(
        dim=5120,
        n_layers=40,
        n_heads=40,
        n_kv_heads=40,
        ffn_dim=13824,
        vocab_size=32000,
        rope_theta=10000.0,
        activation_checkpointing=True,
    ),
    # mistralai/Mixtral-8x7B-v0.1 (SPHINX-MoE)
    "mixtral-8x7b": ModelArgs(
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        ffn_dim=14336,
        vocab_size=32000,
        rope_theta=1_000_000.0,
        num_experts=8,
        top_k=2,
        moe_ffn_dim=14336,
        activation_checkpointing=True,
    ),
}

# Which state-dict adapter reads each flavor's Hugging Face checkpoint (state_dict_adapter.py).
HF_FAMILY: dict[str, str] = {
    "debug": "llama",
    "debug-moe": "mixtral",
    "tinyllama-1.1b": "llama",
    "internlm2-7b": "internlm2",
    "llama2-13b": "llama",
    "mixtral-8x7b": "mixtral",
}


def get_flavor(name: str, **overrides) -> ModelArgs:
    """A fresh copy of flavor `name` with `overrides` applied (e.g. vocab_size=len(tokenizer))."""
    if name not in LLM_FLAVORS:
        raise ValueError(f"unknown LLM flavor {name!r}; choose one of {sorted(LLM_FLAVORS)}")
    known = {f.name for f in fields(ModelArgs)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown ModelArgs fields {unknown}; valid fields: {sorted(known)}")
    return replace(LLM_FLAVORS[name], **overrides)


def count_params(args: ModelArgs, active: bool = False) -> int:
    """Parameter count of the decoder built on the meta device (no memory, no weights).

    active=True counts what one token uses: each MoE layer's experts scaled by top_k / num_experts
    (router, attention, norms, embeddings and head count fully).
    """
    import torch

    from sphinxx.model.llm import Transformer

    with torch.device("meta"):
        model = Transformer(args)
    total = 0
    # named_parameters de-duplicates tied weights, so tie_embeddings counts them once.
    for name, param in model.named_parameters():
        numel = param.numel()
        if active and args.is_moe and ".moe.experts." in name:
            # ep_size > 1 builds only local experts; scale to the global expert count first.
            numel = numel * args.ep_size * args.top_k // args.num_experts
        elif args.is_moe and ".moe.experts." in name:
            numel *= args.ep_size
        total += numel
    return total
