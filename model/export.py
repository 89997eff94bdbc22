"""Write a trained SPHINX-X as one folder: the LLM as transformers loads it, the rest beside it.

Why: the teams evaluating a sweep run their own harnesses. Text-only harnesses (lm-eval and the
like) load `AutoModelForCausalLM.from_pretrained(folder)`, so the decoder leaves in the Hub layout
of its architecture; the multimodal model leaves complete in the same folder (vision towers,
projector, tags, the any-resolution processor's settings, the conversation template, the
tokenizer), which `sphinxx.model.exported` opens and generates from without the training stack
(docs/model.md, "Export for standard evaluation"):

    config.json                          LlamaConfig / MixtralConfig built from the ModelArgs
    generation_config.json               bos / eos / pad of the tokenizer
    model.safetensors                    small models; else model-0000i-of-0000N.safetensors
                                         + model.safetensors.index.json
    tokenizer files                      written by the caller (jobs/export.py)
    sphinxx_multimodal.safetensors       projector.*, start_img, end_img, skip_token (ours)
    vision/convnext/, vision/dinov2/     each tower as transformers writes it: config.json +
                                         model.safetensors (ConvNextModel / Dinov2Model names)
    sphinxx_multimodal.json              the manifest: model args, processor, template, tokenizer
                                         ids, file list, sources; written last (a folder with it
                                         is a complete export)

Every dense decoder (TinyLlama, LLaMA2, InternLM2, debug) leaves as `LlamaForCausalLM`: after
conversion they are the same architecture, so InternLM2 is written with Llama names (no fused
`wqkv`, no remote code). MoE decoders leave as `MixtralForCausalLM` with per-expert tensors (the
Hub files' layout, which transformers 5.x fuses at load). Names come from the state-dict adapters
(state_dict_adapter.py), the only code that knows foreign names.

Pure: local folders and in-memory (or mmap'ed) tensors only; `sphinxx.model` never talks to
object stores (the download, the tower and tokenizer staging live in `sphinxx.jobs.export`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, replace
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig, LlamaConfig, MixtralConfig

from sphinxx.model.anyres import CELL_SIZE, CLIP_MEAN, CLIP_STD, AnyResConfig
from sphinxx.model.convert import _meta_shapes, _ShardWriter
from sphinxx.model.sphinx import SphinxArgs
from sphinxx.model.state_dict_adapter import get_adapter
from sphinxx.model.vision import VisionArgs, VisionEncoders
from sphinxx.schema.decoder import ModelArgs

# 2: the towers in vision/<tower>/, the model args, processor, template and file list in the JSON.
FORMAT_VERSION = 2
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MULTIMODAL_WEIGHTS = "sphinxx_multimodal.safetensors"
MULTIMODAL_CONFIG = "sphinxx_multimodal.json"
TOWERS = ("convnext", "dinov2")
TOWER_CLASSES = {"convnext": "ConvNextModel", "dinov2": "Dinov2Model"}
TOWER_CONFIG = "config.json"
TOWER_WEIGHTS = "model.safetensors"
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


def tower_dir(tower: str) -> str:
    """The folder of one vision tower inside an export, relative to it."""
    return f"{VISION_PREFIX.rstrip('.')}/{tower}"


def export_vision(
    vision: Mapping[str, torch.Tensor], args: VisionArgs, out: str, dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """Write both towers (`vision.<tower>.model.*` of our state dict, every tensor present) into
    `out/vision/<tower>/` as transformers writes a `ConvNextModel` / `Dinov2Model`: its config
    (built from `args`, as `vision.py` builds the tower) and `model.safetensors` with its names.
    Returns the manifest's `vision` entry."""
    with torch.device("meta"):
        towers = VisionEncoders(args)  # shapes and configs only, no memory
    expected = {VISION_PREFIX + k: tuple(v.shape) for k, v in towers.state_dict().items()}
    missing = sorted(set(expected) - set(vision))
    unexpected = sorted(set(vision) - set(expected))
    wrong = sorted(k for k in set(expected) & set(vision) if tuple(vision[k].shape) != expected[k])
    if missing or unexpected or wrong:
        raise ValueError(
            f"the vision towers do not match the run's vision preset: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}, wrong shape {wrong[:4]} (towers loaded from URIs must be "
            "handed in with the checkpoint's tensors)"
        )
    entry: dict[str, Any] = {"args": asdict(args)}
    for tower in TOWERS:
        folder = os.path.join(out, tower_dir(tower))
        os.makedirs(folder, exist_ok=True)
        getattr(towers, tower).model.config.save_pretrained(folder)
        prefix = f"{VISION_PREFIX}{tower}.model."
        tensors = {k[len(prefix) :]: vision[k] for k in sorted(vision) if k.startswith(prefix)}
        save_file(
            {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in tensors.items()},
            os.path.join(folder, TOWER_WEIGHTS),
            metadata={"format": "pt"},
        )
        entry[tower] = {"dir": tower_dir(tower), "class": TOWER_CLASSES[tower], "tensors": len(tensors)}
    return entry


def processor_entry(image: AnyResConfig) -> dict[str, Any]:
    """The any-resolution processor's settings as the manifest writes them (`anyres.py`)."""
    return {
        "grid": image.grid,
        "canvas": image.canvas,
        "cell_size": CELL_SIZE,
        "convnext_view_size": image.convnext_view_size,
        "dino_view_size": image.dino_view_size,
        "use_skip_token": image.use_skip_token,
        "resize": "bicubic, antialias; long side to the canvas; pasted at (0, 0) on CLIP-mean padding",
        "normalize": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
    }


def export_multimodal(
    multimodal: Mapping[str, torch.Tensor],
    sphinx_args: SphinxArgs,
    out: str,
    *,
    vision: Mapping[str, torch.Tensor],
    processor: AnyResConfig | None = None,
    template: Mapping[str, Any] | None = None,
    token_ids: Mapping[str, int | None] | None = None,
    dtype: torch.dtype | None = None,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the projector and the tags as `sphinxx_multimodal.safetensors` (our names), both
    towers under `vision/` (`export_vision`), and last the manifest `sphinxx_multimodal.json`.

    `sphinx_args` is the run's `SphinxArgs`; `processor` the run's image layout (default the
    model's); `template` the conversation template's pieces and stop strings; `token_ids` the
    tokenizer's bos/eos/pad; `info` is merged into the JSON (flavor, tower URIs, source checkpoint
    and step: what the caller knows). The decoder and tokenizer files must be in `out` already:
    the manifest lists every file of the folder. Returns the JSON body.
    """
    image = processor or sphinx_args.image
    expected = {"projector.proj.weight", "projector.proj.bias", "projector.norm.weight",
                "projector.norm.bias", "start_img", "end_img",
                *(["skip_token"] if image.use_skip_token else [])}  # fmt: skip
    if set(multimodal) != expected:
        raise ValueError(
            f"the checkpoint's projector and tags do not match its run config: missing "
            f"{sorted(expected - set(multimodal))}, unexpected {sorted(set(multimodal) - expected)}"
        )
    vision_entry = export_vision(vision, sphinx_args.vision, out, dtype)
    save_file(
        {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in sorted(multimodal.items())},
        os.path.join(out, MULTIMODAL_WEIGHTS),
        metadata={"format": "pt"},
    )
    weight = multimodal["projector.proj.weight"]
    llm_args = replace(sphinx_args.llm, ep_size=1, activation_checkpointing=False)
    body: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "weights": MULTIMODAL_WEIGHTS,
        "llm": {
            "architecture": hf_architecture(llm_args)[0],
            "family": hf_architecture(llm_args)[1],
            "hidden_size": llm_args.dim,
            "args": asdict(llm_args),
        },
        "vision": vision_entry,
        "processor": processor_entry(image),
        "projector": {
            "kind": "Linear(in_dim, hidden_size) + LayerNorm(hidden_size)",
            "in_dim": int(weight.shape[1]),
            "out_dim": int(weight.shape[0]),
        },
        "shapes": {k: list(v.shape) for k, v in sorted(multimodal.items())},
        "template": dict(template) if template is not None else None,
        "token_ids": dict(token_ids) if token_ids else None,
        **dict(info or {}),
    }
    body["files"] = folder_files(out)
    with open(os.path.join(out, MULTIMODAL_CONFIG), "w") as f:
        json.dump(body, f, indent=1, sort_keys=True)
    return body


def folder_files(out: str) -> list[str]:
    """Every file under `out`, relative, `/`-separated, sorted (the manifest itself left out)."""
    found = []
    for root, _, names in os.walk(out):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), out).replace(os.sep, "/")
            if rel != MULTIMODAL_CONFIG:
                found.append(rel)
    return sorted(found)
