"""Per-rank memory of a training run, estimated before any GPU is asked for.

Why: a sweep point that does not fit its GPUs fails minutes into a run, after the image pull,
the weight staging and the model build. These numbers come from the flavor's shapes on the meta
device and from what the job configures (`sphinxx.jobs.engine`, `sphinxx.jobs.parallelize`), so
`sphinxx model info FLAVOR` and `sphinxx sweep plan --cost` can print them without memory. This
module takes a model shape and a `TrainingSetup`; which setup a run trains under is the job's
business (`sphinxx.jobs.run_memory`), since the model never reads run configs.

What the job holds per rank, in bytes (DeepSpeed 0.19.8 with `parallelize.deepspeed_config`;
docs/training.md, "Memory and cost estimates"). Psi = trainable parameters on this rank (dense
ones plus this rank's E / EP experts), DP = world size, eDP = world size / EP (the expert
data-parallel group of docs/moe.md, "DeepSpeed and ZeRO with experts"), a partition of Psi =
dense / DP + local experts / eDP; g = 2 bytes under bf16 (DeepSpeed casts every parameter,
the frozen towers included, to bf16), 4 under fp32 (what the job trains on CPU):

| component | ZeRO-0 | ZeRO-1 | ZeRO-2 |
|---|---|---|---|
| weights | g Psi | g Psi | g Psi |
| frozen towers | g F | g F | g F |
| gradients | g Psi | g Psi (accumulated whole until the boundary) | g partition |
| fp32 master weights | bf16: 4 Psi (FP16_UnfusedOptimizer); fp32: none | 4 partition | 4 partition |
| AdamW m and v (fp32) | 8 Psi | 8 partition | 8 partition |
| reduce bucket | none | g x 5e8 (held between micro-steps) | g x 5e8 (during backward) |

ZeRO-1 holds the whole gradient because DeepSpeed reduces it only at the accumulation boundary;
ZeRO-2 reduces bucket by bucket during backward and keeps its partition. The reduce bucket is
DeepSpeed's default `reduce_bucket_size` (5e8 elements); the job does not set it. Not counted:
the CUDA context and allocator fragmentation (a few GiB per GPU), the fp32 gradient of the
partition that the step creates (4 partition, while no activations are alive), and the boundary
slack of a partition (DeepSpeed keeps the whole gradient of the one parameter that straddles
two partitions: under 1 % on the debug flavors).

Activations (saved for backward by one micro-batch): per token and decoder block, with p the
compute dtype's bytes, h = dim, kv = n_kv_heads x head_dim, f = ffn_dim; what autograd saves on
our decoder's code (tests/model/test_memory.py counts it with saved-tensor hooks):
- two RMSNorms: each saves its input in fp32 (4h), the normalised x (p h), the weighted output
  that the next matmuls save (p h) and its fp32 rsqrt (4 bytes);
- attention: the rotated q and k, v, SDPA's output (which is also wo's input) and its fp32
  logsumexp: p (2h + 2kv) + 4 n_heads. RoPE multiplies by constant tables and saves nothing;
  SDPA is a flash / memory-efficient kernel (no S x S matrix);
- dense SwiGLU: w1's output, its silu, w3's output and their product: 4 p f;
- MoE (top-k of E experts): per routed row the gathered input, the grouped kernel's w1 and v1
  outputs and silu (its product is recomputed in backward), the expert's output (kept by the
  weighted combine for the routing weights' grad) and the routing weight: p k (2h + 3 f_moe + 1),
  plus the fp32 router probabilities and top-k weights (4E + 4k), int64 routing indices (24k) and
  two fp32 per-token sums (8).
With activation checkpointing a block keeps only its input (p h per token); in backward one
block's activations are recomputed at a time (`recompute`). Outside the blocks: the final
norm (4h + p h + 4), the token ids and the padding mask (9), the RoPE tables (2 S head_dim p per
micro-batch), the LM head at the labelled positions (`target_fraction` of the tokens: the
hidden state p h, the fp32 log-softmax 4V and the label 8) and the projector per image token
(its input and the LayerNorm's, p (C + h)). The frozen towers run under no_grad before the
decoder: their working memory is transient and not counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from sphinxx.model.flavors import get_sphinx_args, meta_sphinx
from sphinxx.model.sphinx import SphinxArgs
from sphinxx.schema.decoder import ModelArgs

DEEPSPEED_REDUCE_BUCKET = 500_000_000  # elements: DeepSpeed's default zero_optimization.reduce_bucket_size
PRECISION_BYTES = {"bf16": 2, "fp32": 4}
GIB = 1024**3


@dataclass(frozen=True)
class TrainingSetup:
    """How a run trains, as far as memory is concerned (the run config's fields in brackets)."""

    world_size: int = 1  # ranks, one GPU each [parallel.max_workers x gpus_per_worker]
    zero_stage: int = 2  # [parallel.zero_stage]
    ep_size: int = 1  # [parallel.ep_size]
    precision: str = "bf16"  # [train.precision]
    micro_batch: int = 1  # sequences per forward [train.micro_batch]
    seq_len: int = 4096  # tokens per sequence, padded: the upper bound [data.seq_len]
    activation_checkpointing: bool = False  # [model.activation_checkpointing or the flavor's]
    target_fraction: float = 1.0  # share of positions with a label (the LM head runs there)
    image_tokens: int = 0  # image positions per sequence (the projector runs there)

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2):
            raise ValueError(f"zero_stage must be 0, 1 or 2, got {self.zero_stage}")
        if self.precision not in PRECISION_BYTES:
            raise ValueError(f"precision must be one of {sorted(PRECISION_BYTES)}, got {self.precision!r}")
        if self.world_size < 1 or self.ep_size < 1 or self.world_size % self.ep_size:
            raise ValueError(f"ep_size {self.ep_size} must divide world_size {self.world_size}")
        if self.ep_size > 1 and self.zero_stage == 0:
            raise ValueError("expert parallelism needs ZeRO stage 1 or 2 (docs/moe.md)")
        if self.micro_batch < 1 or self.seq_len < 1:
            raise ValueError("micro_batch and seq_len must be positive")
        if not 0 <= self.target_fraction <= 1:
            raise ValueError(f"target_fraction must be in [0, 1], got {self.target_fraction}")
        if not 0 <= self.image_tokens <= self.seq_len:
            raise ValueError(f"image_tokens must be in [0, seq_len], got {self.image_tokens}")


def layer_activation_bytes_per_token(llm: ModelArgs, p: int) -> int:
    """Bytes one decoder block saves for backward per token (module docstring)."""
    h, kv = llm.dim, llm.n_kv_heads * llm.head_dim
    norms = 2 * (4 * h + 2 * p * h + 4)
    attention = p * (2 * h + 2 * kv) + 4 * llm.n_heads
    if llm.is_moe:
        k = llm.top_k
        ffn = p * k * (2 * h + 3 * llm.moe_ffn_dim + 1) + 4 * llm.num_experts + 28 * k + 8
    else:
        ffn = 4 * p * llm.ffn_dim
    return norms + attention + ffn


def activation_bytes(llm: ModelArgs, projector_in: int, setup: TrainingSetup) -> dict[str, int]:
    """Activations of one micro-batch, by part (module docstring): `blocks`, `head` and
    `projector` are saved by the forward; `recompute` is the one block that activation
    checkpointing rebuilds at a time in backward (0 without it)."""
    p = PRECISION_BYTES[setup.precision]
    tokens = setup.micro_batch * setup.seq_len
    layer = tokens * layer_activation_bytes_per_token(llm, p)
    if setup.activation_checkpointing:
        blocks, recompute = llm.n_layers * tokens * p * llm.dim, layer
    else:
        blocks, recompute = llm.n_layers * layer, 0
    targets = round(tokens * setup.target_fraction)
    head = (
        tokens * (4 * llm.dim + p * llm.dim + 4 + 9)
        + 2 * setup.seq_len * llm.head_dim * p
        + targets * (p * llm.dim + 4 * llm.vocab_size + 8)
    )
    projector = setup.micro_batch * setup.image_tokens * p * (projector_in + llm.dim)
    return {"blocks": blocks, "head": head, "projector": projector, "recompute": recompute}


def _split_params(model: torch.nn.Module) -> dict[str, int]:
    """Trainable dense, trainable expert (this rank's slice) and frozen parameter counts."""
    expert_ids = {
        id(p)
        for m in model.modules()
        if isinstance(getattr(m, "experts", None), torch.nn.Module) and hasattr(m, "router")
        for p in m.get_submodule("experts").parameters()
    }
    counts = {"dense": 0, "experts_local": 0, "frozen": 0}
    for p in model.parameters():
        if id(p) in expert_ids:
            counts["experts_local"] += p.numel()
        elif p.requires_grad:
            counts["dense"] += p.numel()
        else:
            counts["frozen"] += p.numel()
    return counts


def memory_estimate(args: SphinxArgs, setup: TrainingSetup) -> dict[str, Any]:
    """Per-rank bytes of training SphinxArgs `args` as `setup` says (module docstring's table).

    The model is built on the meta device with the setup's EP size, so the expert slice is the
    rank's own. Returns the components, their total, the parameter counts behind them and the
    assumptions, JSON-ready.
    """
    llm = args.llm
    if setup.ep_size > 1 and not llm.is_moe:
        raise ValueError(f"ep_size {setup.ep_size} needs an MoE flavor")
    if llm.is_moe:
        llm = replace(llm, ep_size=setup.ep_size)
    model = meta_sphinx(replace(args, llm=llm))
    n = _split_params(model)
    g = PRECISION_BYTES[setup.precision]
    dp, edp = setup.world_size, setup.world_size // setup.ep_size
    trainable = n["dense"] + n["experts_local"]
    partition = n["dense"] / dp + n["experts_local"] / edp
    stage = setup.zero_stage
    grads = g * (partition if stage == 2 else trainable)
    master: float
    adam: float
    if stage == 0:
        master = 4 * trainable if g != 4 else 0
        adam = 8 * trainable
    else:
        master, adam = 4 * partition, 8 * partition
    bucket = g * DEEPSPEED_REDUCE_BUCKET if stage in (1, 2) else 0
    acts = activation_bytes(llm, args.vision.out_dim, setup)
    components = {
        "weights": g * trainable,
        "gradients": round(grads),
        "optimizer_states": round(master + adam),
        "reduce_bucket": bucket,
        "activations": sum(acts.values()),
        "frozen_towers": g * n["frozen"],
    }
    components["total"] = sum(components.values())
    return {
        "bytes": components,
        "gib": {k: v / GIB for k, v in components.items()},
        "detail": {
            "master_weights_fp32": round(master),
            "adam_m_and_v_fp32": round(adam),
            "activations": acts,
            "activations_per_token_per_block": layer_activation_bytes_per_token(llm, g),
        },
        "params": {**n, "trainable_on_rank": trainable, "partition": round(partition)},
        "setup": asdict(setup),
        "assumptions": assumptions(setup),
    }


def assumptions(setup: TrainingSetup) -> list[str]:
    """What the numbers assume, in words (printed with them)."""
    dtype = "bf16" if setup.precision == "bf16" else "fp32"
    out = [
        f"DeepSpeed 0.19.8 ZeRO-{setup.zero_stage} as sphinxx.jobs.parallelize configures it; {dtype} "
        "parameters and gradients (DeepSpeed casts every parameter, the frozen towers included), "
        "fp32 master weights and fp32 AdamW m and v",
        f"partitions over DP = {setup.world_size} ranks, "
        f"experts over eDP = {setup.world_size // setup.ep_size} (EP {setup.ep_size})",
        f"activations of one micro-batch of {setup.micro_batch} x {setup.seq_len} tokens (every position "
        f"filled), labels at {setup.target_fraction:.0%} of them, {setup.image_tokens} image tokens per "
        f"sequence, activation checkpointing {'on' if setup.activation_checkpointing else 'off'}; "
        "flash/memory-efficient attention (no S x S matrix)",
        "not counted: CUDA context and allocator fragmentation, the step's transient fp32 gradient "
        "partition, the frozen towers' transient working memory",
    ]
    if setup.zero_stage in (1, 2):
        out.append(
            f"reduce bucket: DeepSpeed's default reduce_bucket_size, {DEEPSPEED_REDUCE_BUCKET:.0e} elements"
        )
    return out


def flavor_memory(
    flavor: str, setup: TrainingSetup, use_skip_token: bool = True, **llm_overrides: Any
) -> dict[str, Any]:
    """`memory_estimate` of a named flavor with decoder overrides (`sphinxx model info`)."""
    return memory_estimate(get_sphinx_args(flavor, use_skip_token=use_skip_token, **llm_overrides), setup)
