"""Write a trained SPHINX-X LLM as a folder transformers loads, plus its multimodal parts beside it.

Why: the teams evaluating a sweep run their own harnesses (lm-eval and the like), which load
`AutoModelForCausalLM.from_pretrained(folder)`. So the decoder leaves in the Hub layout of its
architecture, and the parts transformers has no class for (projector, image tags) go into files
of our own next to it (docs/model.md, "Export for standard evaluation"):

    config.json                          LlamaConfig / MixtralConfig built from the ModelArgs
    generation_config.json               bos / eos / pad of the tokenizer
    model.safetensors                    small models; else model-0000i-of-0000N.safetensors
                                         + model.safetensors.index.json
    tokenizer files                      written by the caller (jobs/export.py)
    sphinxx_multimodal.safetensors       projector.*, start_img, end_img, skip_token (ours)
    sphinxx_multimodal.json              vision preset, canvas, skip token, shapes, sources

Every dense decoder (TinyLlama, LLaMA2, InternLM2, debug) leaves as `LlamaForCausalLM`: after
conversion they are the same architecture, so InternLM2 is written with Llama names (no fused
`wqkv`, no remote code). MoE decoders leave as `MixtralForCausalLM` with per-expert tensors (the
Hub files' layout, which transformers 5.x fuses at load). Names come from the state-dict adapters
(state_dict_adapter.py), the only code that knows foreign names.

Pure: local folders and in-memory (or mmap'ed) tensors only; `sphinxx.model` never talks to
object stores (the download and the tokenizer staging live in `sphinxx.jobs.export`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig, LlamaConfig, MixtralConfig

from sphinxx.model.convert import _meta_shapes, _ShardWriter
from sphinxx.model.sphinx import SphinxArgs
from sphinxx.model.state_dict_adapter import get_adapter
from sphinxx.schema.decoder import ModelArgs

FORMAT_VERSION = 1
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MULTIMODAL_WEIGHTS = "sphinxx_multimodal.safetensors"
MULTIMODAL_CONFIG = "sphinxx_multimodal.json"
# Our trainable tensors outside the decoder (sphinx.py): the projector and the image tags.
MULTIMODAL_PREFIXES = ("projector.", "start_img", "end_img", "skip_token")
LLM_PREFIX = "llm."
VISION_PREFIX = "vision."

ProgressFn = Callable[[int, int, str], None]  # (tensors written, tensors total, HF name)


def hf_architecture(args: ModelArgs) -> tuple[str, str]:
    """(transformers class, adapter family) the decoder is exported as."""
    return ("MixtralForCausalLM", "mixtral") if args.is_moe else ("LlamaForCausalLM", "llama")


def hf_config(
    args: ModelArgs, dtype: torch.dtype, token_ids: Mapping[str, int | None] | None = None
) -> LlamaConfig | MixtralConfig:
    """transformers' own config class for the decoder, every field that changes the logits set.

    `max_position_embeddings` is the run's `max_seq_len` (what it trained at; RoPE is unscaled).
    `token_ids`: bos/eos/pad ids of the tokenizer (None leaves transformers' defaults out).
    """
    ids = {f"{k}_token_id": v for k, v in (token_ids or {}).items() if k in ("bos", "eos", "pad")}
    architecture, _ = hf_architecture(args)
    common: dict[str, Any] = dict(
        architectures=[architecture],
        dtype=dtype,
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        head_dim=args.head_dim,
        hidden_act="silu",
        max_position_embeddings=args.max_seq_len,
        rms_norm_eps=args.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(args.rope_theta)},
        tie_word_embeddings=args.tie_embeddings,
        attention_dropout=0.0,
        **ids,
    )
    if args.is_moe:
        return MixtralConfig(
            intermediate_size=args.moe_ffn_dim,
            num_local_experts=args.num_experts,
            num_experts_per_tok=args.top_k,
            router_jitter_noise=0.0,
            router_aux_loss_coef=args.aux_loss_coef,
            sliding_window=None,
            **common,
        )
    return LlamaConfig(intermediate_size=args.ffn_dim, attention_bias=False, mlp_bias=False, **common)


def check_llm_state(llm: Mapping[str, torch.Tensor], args: ModelArgs) -> None:
    """Every decoder tensor present with the shape `args` builds, nothing else (ValueError naming them)."""
    shapes = _meta_shapes(replace(args, ep_size=1))
    missing = sorted(set(shapes) - set(llm))
    unexpected = sorted(set(llm) - set(shapes))
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint's decoder does not match its run config: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}"
        )
    shape_of = getattr(llm, "shape", None)  # a lazy mapping may know shapes without building tensors
    for name, shape in shapes.items():
        got = tuple(shape_of(name) if shape_of is not None else llm[name].shape)
        if got != tuple(shape):
            raise ValueError(f"{name}: checkpoint shape {got}, the run config builds {tuple(shape)}")


def export_llm(
    llm: Mapping[str, torch.Tensor],
    args: ModelArgs,
    out: str,
    *,
    dtype: torch.dtype | None = None,
    token_ids: Mapping[str, int | None] | None = None,
    max_shard_bytes: int = 5 * 2**30,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Write the decoder `llm` (our names, full tensors, every expert) into the existing folder `out`.

    `llm` may be lazy (mmap'ed): tensors are read one at a time and memory stays at about one
    output shard. `dtype` casts every tensor (default: keep the checkpoint's). Returns a summary
    (architecture, files, bytes, dtype).
    """
    args = replace(args, ep_size=1)  # the export holds every expert
    check_llm_state(llm, args)
    architecture, family = hf_architecture(args)
    adapter = get_adapter(family, args, **({"layout": "4.x"} if family == "mixtral" else {}))
    out_dtype = dtype or llm[next(iter(llm))].dtype
    writer = _ShardWriter(out, max_shard_bytes)
    total = _count_hf_tensors(args)
    for done, (name, tensor) in enumerate(adapter.to_hf(llm), start=1):
        writer.add(name, tensor.to(out_dtype))
        if progress is not None:
            progress(done, total, name)
    weight_map = writer.finish()
    files = sorted(set(weight_map.values()))
    if len(files) == 1:  # one file: the plain name transformers looks for first, no index
        os.replace(os.path.join(out, files[0]), os.path.join(out, SINGLE_NAME))
        files = [SINGLE_NAME]
    else:
        with open(os.path.join(out, INDEX_NAME), "w") as f:
            body = {
                "metadata": {"total_size": writer.total_bytes},
                "weight_map": dict(sorted(weight_map.items())),
            }
            json.dump(body, f, indent=1)
    config = hf_config(args, out_dtype, token_ids)
    config.save_pretrained(out)
    if token_ids:
        GenerationConfig.from_model_config(config).save_pretrained(out)
    return {
        "architecture": architecture,
        "files": files,
        "tensors": len(weight_map),
        "bytes": writer.total_bytes,
        "dtype": str(out_dtype).removeprefix("torch."),
    }


def _count_hf_tensors(args: ModelArgs) -> int:
    per_layer = 7 + (1 + 3 * args.num_experts if args.is_moe else 3)
    return 2 + args.n_layers * per_layer + (0 if args.tie_embeddings else 1)


class PrefixView(Mapping[str, torch.Tensor]):
    """The entries of `inner` under `prefix`, prefix stripped; reads go through (stays lazy)."""

    def __init__(self, inner: Mapping[str, torch.Tensor], prefix: str):
        self.inner, self.prefix = inner, prefix
        self.names = [k[len(prefix) :] for k in inner if k.startswith(prefix)]

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.inner[self.prefix + key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.prefix + key in self.inner

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def shape(self, key: str) -> tuple[int, ...]:
        shape_of = getattr(self.inner, "shape", None)
        return tuple(
            shape_of(self.prefix + key) if shape_of is not None else self.inner[self.prefix + key].shape
        )


def split_state(
    state: Mapping[str, torch.Tensor],
) -> tuple[Mapping[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Our SphinxX state dict -> (decoder with `llm.` stripped, projector + tags, vision towers).

    The decoder stays a lazy view of `state`: its tensors are read one at a time by the writer.
    """
    multimodal, vision = {}, {}
    for name in state:
        if name.startswith(LLM_PREFIX):
            continue
        if name.startswith(MULTIMODAL_PREFIXES):
            multimodal[name] = state[name]
        elif name.startswith(VISION_PREFIX):
            vision[name] = state[name]
        else:
            raise ValueError(
                f"checkpoint tensor {name!r} belongs to no part of SPHINX-X (llm, projector, tags, vision)"
            )
    return PrefixView(state, LLM_PREFIX), multimodal, vision


def export_multimodal(
    multimodal: Mapping[str, torch.Tensor],
    sphinx_args: SphinxArgs,
    out: str,
    *,
    vision: Mapping[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the projector and the tags (and `vision`, towers that live only in the checkpoint)
    as `sphinxx_multimodal.safetensors` with our names, described by `sphinxx_multimodal.json`.

    `sphinx_args` is the run's `SphinxArgs`; `info` is merged into the JSON (flavor, tower URIs,
    source checkpoint and step: what the caller knows). Returns the JSON body.
    """
    image = sphinx_args.image
    expected = {"projector.proj.weight", "projector.proj.bias", "projector.norm.weight",
                "projector.norm.bias", "start_img", "end_img",
                *(["skip_token"] if image.use_skip_token else [])}  # fmt: skip
    if set(multimodal) != expected:
        raise ValueError(
            f"the checkpoint's projector and tags do not match its run config: missing "
            f"{sorted(expected - set(multimodal))}, unexpected {sorted(set(multimodal) - expected)}"
        )
    tensors = {**multimodal, **(vision or {})}
    save_file(
        {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in sorted(tensors.items())},
        os.path.join(out, MULTIMODAL_WEIGHTS),
        metadata={"format": "pt"},
    )
    weight = multimodal["projector.proj.weight"]
    body: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "weights": MULTIMODAL_WEIGHTS,
        "llm": {"architecture": hf_architecture(sphinx_args.llm)[0], "hidden_size": sphinx_args.llm.dim},
        "canvas": image.canvas,
        "grid": image.grid,
        "convnext_view_size": image.convnext_view_size,
        "dino_view_size": sphinx_args.vision.dino_view_size,
        "use_skip_token": image.use_skip_token,
        "projector": {
            "kind": "Linear(in_dim, hidden_size) + LayerNorm(hidden_size)",
            "in_dim": int(weight.shape[1]),
            "out_dim": int(weight.shape[0]),
        },
        "shapes": {k: list(v.shape) for k, v in sorted(tensors.items())},
        "towers_in_file": sorted({k.split(".")[1] for k in vision or {}}),
        **dict(info or {}),
    }
    with open(os.path.join(out, MULTIMODAL_CONFIG), "w") as f:
        json.dump(body, f, indent=1, sort_keys=True)
    return body
