"""The flavor table: every model the project knows, in one place.

A flavor is a named SPHINX-X model: an LLM decoder shape (`ModelArgs`), the vision towers it pairs
with (a preset of `sphinxx.model.vision`), the any-resolution grid, the adapter that reads its
Hugging Face weights, and its exact parameter counts. The names are the values of a sweep's model
axis (`spec.axes.models`) and of `model.flavor` in a run config.

The counts are the decoder's, exactly as `sphinxx.model` builds it on the meta device (a test
checks every one). `scaling_params` is the N of a scaling law: parameters a token passes
through, without the embedding and the output head (Kaplan et al. 2020; Mixtral's 8 experts
count top_k / num_experts of theirs).

Shapes follow the Hugging Face configs of each base (docs/model.md, "Flavors").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .decoder import ModelArgs


@dataclass(frozen=True)
class Flavor:
    name: str
    llm: ModelArgs
    vision: str  # key of sphinxx.model.vision.VISION_PRESETS
    hf_family: str  # state-dict adapter reading its Hugging Face checkpoint
    params: int  # decoder parameters, every expert counted
    active_params: int  # decoder parameters one token uses (MoE: top_k of num_experts experts)
    paper_name: str = ""  # member of the SPHINX-X family; "" for the debug flavors
    grid: int = 2  # any-resolution canvas = grid * 224 px
    convnext_view_size: int = 256  # ConvNeXt input per view

    @property
    def num_experts(self) -> int:
        return self.llm.num_experts

    @property
    def is_moe(self) -> bool:
        return self.llm.is_moe

    @property
    def embedding_params(self) -> int:
        """Token embedding plus the output head (one matrix when they are tied)."""
        return self.llm.vocab_size * self.llm.dim * (1 if self.llm.tie_embeddings else 2)

    @property
    def scaling_params(self) -> int:
        """N of the scaling law: active, non-embedding decoder parameters."""
        return self.active_params - self.embedding_params


_DEBUG: dict[str, int] = dict(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=512, vocab_size=4096)
_MICRO_VOCAB = 4096  # the synthetic tokenizer's size (sphinxx data synth)
_VISION = "convnext-xxl+dinov2-g"

FLAVORS: dict[str, Flavor] = {
    f.name: f
    for f in (
        # vocab 4096: small enough for the synthetic test tokenizer; override with vocab_size=...
        Flavor("debug", ModelArgs(**_DEBUG), "debug", "llama", 4_458_752, 4_458_752),  # type: ignore[arg-type]
        Flavor(
            "debug-moe",
            ModelArgs(**_DEBUG, num_experts=8, top_k=2, moe_ffn_dim=128),  # type: ignore[arg-type]
            "debug",
            "mixtral",
            6_039_808,
            3_680_512,
        ),
        # The micro family: three dense sizes, 64-dim heads, 4x apart or more in N, small enough
        # for a 3 x 3 scaling sweep on 2 CPU cores (examples/sweeps/micro-family.yaml).
        Flavor(
            "micro-s",
            ModelArgs(vocab_size=_MICRO_VOCAB, dim=128, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=384),
            "debug",
            "llama",
            1_442_432,
            1_442_432,
        ),
        Flavor(
            "micro-m",
            ModelArgs(vocab_size=_MICRO_VOCAB, dim=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=768),
            "debug",
            "llama",
            5_245_184,
            5_245_184,
        ),
        Flavor(
            "micro-l",
            ModelArgs(vocab_size=_MICRO_VOCAB, dim=384, n_layers=6, n_heads=6, n_kv_heads=2, ffn_dim=1024),
            "debug",
            "llama",
            12_587_904,
            12_587_904,
        ),
        # TinyLlama/TinyLlama-1.1B-intermediate-step-1195k-token-2.5T
        Flavor(
            "tinyllama-1.1b",
            ModelArgs(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_dim=5632, vocab_size=32000),
            _VISION,
            "llama",
            1_100_048_384,
            1_100_048_384,
            paper_name="SPHINX-Tiny",
        ),
        # internlm/internlm2-7b; HF dynamic RoPE scaling is inactive below 32768 positions
        Flavor(
            "internlm2-7b",
            ModelArgs(
                dim=4096,
                n_layers=32,
                n_heads=32,
                n_kv_heads=8,
                ffn_dim=14336,
                vocab_size=92544,
                rope_theta=1_000_000.0,
                activation_checkpointing=True,
            ),
            _VISION,
            "internlm2",
            7_737_708_544,
            7_737_708_544,
            paper_name="SPHINX-Intern2",
        ),
        # meta-llama/Llama-2-13b-hf
        Flavor(
            "llama2-13b",
            ModelArgs(
                dim=5120,
                n_layers=40,
                n_heads=40,
                n_kv_heads=40,
                ffn_dim=13824,
                vocab_size=32000,
                activation_checkpointing=True,
            ),
            _VISION,
            "llama",
            13_015_864_320,
            13_015_864_320,
            paper_name="SPHINX-Plus",
        ),
        # SPHINX-Plus-2K: the same decoder on the 672 px canvas (3 x 3 grid, docs/model.md)
        Flavor(
            "llama2-13b-2k",
            ModelArgs(
                dim=5120,
                n_layers=40,
                n_heads=40,
                n_kv_heads=40,
                ffn_dim=13824,
                vocab_size=32000,
                activation_checkpointing=True,
            ),
            _VISION,
            "llama",
            13_015_864_320,
            13_015_864_320,
            paper_name="SPHINX-Plus-2K",
            grid=3,
        ),
        # mistralai/Mixtral-8x7B-v0.1
        Flavor(
            "mixtral-8x7b",
            ModelArgs(
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
            _VISION,
            "mixtral",
            46_702_792_704,
            12_879_925_248,
            paper_name="SPHINX-MoE",
        ),
    )
}

# The paper's parameter axis, smallest first: the model sizes of a SPHINX-X scaling sweep.
SIZE_AXIS = ("tinyllama-1.1b", "internlm2-7b", "llama2-13b", "mixtral-8x7b")
NAMES = tuple(FLAVORS)
ALIASES = {f.paper_name.lower(): f.name for f in FLAVORS.values() if f.paper_name}


def resolve(name: str) -> Flavor:
    """The flavor of a name or a SPHINX-X paper name (`sphinx-tiny`, case-insensitive)."""
    key = name if name in FLAVORS else ALIASES.get(name.lower())
    if key is None:
        raise ValueError(
            f"unknown flavor {name!r}; choose one of {', '.join(NAMES)} (or {', '.join(ALIASES)})"
        )
    return FLAVORS[key]


OVERRIDABLE = tuple(f.name for f in dataclasses.fields(ModelArgs))


def decoder_args(name: str, **overrides: object) -> ModelArgs:
    """A fresh, validated copy of a flavor's decoder with `overrides` (ModelArgs fields) applied."""
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(f"unknown ModelArgs fields {unknown}; valid fields: {sorted(OVERRIDABLE)}")
    return dataclasses.replace(resolve(name).llm, **overrides)  # type: ignore[arg-type]
