"""What the loop measures: step statistics, gradient norm, expert load, FLOPs / MFU, model sizes.

- `StepStats`: the global (all-reduced) numbers of one optimizer step, which the loop logs.
- Gradient norm: DeepSpeed records the clipped norm under ZeRO-1/2 and the bf16 optimizer; plain
  fp32 ZeRO-0 discards it, so the loop computes it itself before the step (`grad_norm_before_step`).
- Expert load: each expert's share of routed tokens and the max/mean imbalance (MoE only).
- FLOPs: `sphinxx.model.info`'s documented estimates, counted on what a step really processed
  (`FlopModel`): 6 N per LLM position, 12 L d T^2 per sequence of real length T (attention), the
  projector per image token and the frozen towers' forward per encoded view. MFU divides the
  achieved rate by the devices' peak (`progress.device_peak`: datasheet on known GPUs, an
  estimate elsewhere; docs/training.md, "MFU").
- Sizes, both over the whole model (every expert counted, not this rank's EP slice):
  `trainable_params` (everything the optimizer updates) and `scaling_params`, the N of a scaling
  law. Each committed checkpoint carries both, with the loss and the tokens seen
  (`checkpoint_metrics`), so a sweep fits its law from the manifests alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from math import prod
from typing import Any

import torch
import torch.distributed as dist

from sphinxx.jobs.checkpoint.fragments import expert_layers, param_slots
from sphinxx.jobs.engine import expert_parallel_size
from sphinxx.jobs.progress import Peak, device_peak
from sphinxx.model.flavors import meta_sphinx
from sphinxx.model.info import flops, parameter_counts


@dataclass
class StepStats:
    """Global (all-reduced) numbers of one optimizer step."""

    grad_norm: float
    loss: float
    ce: float
    aux: float
    targets: int
    tokens: int
    samples: int
    image_tokens: int
    views: int
    skipped_views: int
    squared_lengths: int  # sum over the step's sequences of (real length)^2: the attention term's count


# ---------------------------------------------------------------------------- model sizes


def trainable_params(model: torch.nn.Module) -> int:
    """Trainable parameters of the whole model (every expert counted, not this rank's slice)."""
    return sum(prod(s.global_shape) for s in param_slots(model) if s.param.requires_grad)


# The decoder's token embedding and output head: a lookup and a readout, not in a scaling law's N.
EMBEDDING_PARAMS = ("llm.tok_embeddings.weight", "llm.output.weight")


def scaling_params(model: torch.nn.Module) -> int:
    """N of the scaling law: trainable parameters a token passes through, without the token
    embedding and the output head (Kaplan et al. 2020). Each expert tensor of an MoE layer counts
    top_k / num_experts of its global size (every expert of every EP rank, not this rank's slice),
    as `sphinxx.schema.flavors.Flavor.scaling_params` counts the decoder; the projector and
    the image tags count fully. Frozen towers do not count."""
    share = {
        id(p): (m.args.top_k, m.args.num_experts)
        for m in expert_layers(model)
        for p in m.experts.parameters()
    }
    total = 0
    for s in param_slots(model):
        if not s.param.requires_grad or s.name in EMBEDDING_PARAMS:
            continue
        numel = prod(s.global_shape)
        if id(s.param) in share:
            top_k, num_experts = share[id(s.param)]
            numel = numel * top_k // num_experts
        total += numel
    return total


def model_sizes(model: torch.nn.Module) -> dict[str, int]:
    """`num_params` = N of the scaling law (`scaling_params`), `num_params_total` = every trainable
    parameter (`trainable_params`)."""
    return {"num_params": scaling_params(model), "num_params_total": trainable_params(model)}


def checkpoint_metrics(loss: float, tokens_seen: int, sizes: dict[str, int]) -> dict[str, float]:
    """The metrics a checkpoint commits (`manifest.metrics`): what the retention policy ranks by
    (`loss`) and a scaling-law point's inputs, D = `tokens_seen` (the run's cumulative training
    tokens) and N = `num_params` (see `model_sizes`)."""
    return {"loss": loss, "tokens_seen": tokens_seen, **sizes}


# ---------------------------------------------------------------------------- gradients


def grad_norm(engine: Any) -> float:
    """The norm DeepSpeed recorded at the last step (0.0 if it recorded none)."""
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else 0.0


def engine_tracks_grad_norm(engine: Any) -> bool:
    """ZeRO-1/2 and the bf16 optimizer record the clipped norm; plain fp32 ZeRO-0 discards it."""
    return bool(engine.zero_optimization() or engine.bfloat16_enabled())


def grad_norm_before_step(model: torch.nn.Module) -> float:
    """Global L2 norm of the averaged gradients (after the last backward's all-reduce).

    Dense grads are identical on every rank; an expert slice's grad lives on its EP rank and is
    replicated over the W / EP expert-data-parallel ranks, so the expert part is summed over the
    world and divided by that replication.
    """
    dense = torch.zeros((), dtype=torch.float64)
    expert = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        if p.grad is None:
            continue
        sq = p.grad.detach().double().pow(2).sum().cpu()
        if getattr(p, "allreduce", True) is False:
            expert += sq
        else:
            dense += sq
    ep = expert_parallel_size(model)
    if ep > 1 and dist.is_initialized():
        expert = all_reduce_host(expert)
        expert /= dist.get_world_size() // ep
    return float((dense + expert).sqrt())


def reduction_device() -> torch.device:
    """Where the default process group reduces: the current GPU under NCCL (which reduces device
    tensors only: a host tensor fails with "No backend type associated with device type cpu"),
    else the host (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_host(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce a small host tensor over the world (`op` "sum" or "max"), on the backend's device;
    returns a host tensor (`t` itself when no process group is up)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    device = reduction_device()
    if device.type == "cpu":
        dist.all_reduce(t, op=reduce_op)
        return t
    on_device = t.to(device)
    dist.all_reduce(on_device, op=reduce_op)
    return on_device.cpu()


# ---------------------------------------------------------------------------- experts


def expert_load(model: torch.nn.Module) -> dict[str, float]:
    """MoE: each expert's share of routed tokens (mean over layers) and max/mean imbalance."""
    loads = [
        t for m in model.modules() if isinstance(t := getattr(m, "tokens_per_expert", None), torch.Tensor)
    ]
    if not loads:
        return {}
    stacked = torch.stack([load.float().cpu() for load in loads])  # [layers, E]
    shares = stacked / stacked.sum(dim=1, keepdim=True).clamp_min(1.0)
    out = {f"moe/expert{e}_share": float(v) for e, v in enumerate(shares.mean(0))}
    out["moe/imbalance"] = float((stacked.max(1).values / stacked.mean(1).clamp_min(1e-9)).mean())
    return out


# ---------------------------------------------------------------------------- FLOPs and MFU


@dataclass
class FlopModel:
    """Model FLOPs of a training step from what it processed, and the peak they are measured against.

    step FLOPs = per_token * positions + per_target * target positions
               + per_squared_length * sum(T^2 over sequences)
               + per_image_token * image positions + per_view * encoded views

    with T each sequence's real length (text, image and skip positions; padding excluded), so a
    batch of short sequences is not credited with attention at the configured `seq_len`.
    """

    per_token: float  # LLM training FLOPs per position without attention or the LM head: 6 (N - head)
    per_squared_length: float  # attention training FLOPs per (position x its sequence's length): 12 L d
    per_image_token: float  # projector training FLOPs per image position
    per_view: float  # frozen towers' forward FLOPs per encoded view
    peak: Peak  # per device
    per_target: float = (
        0.0  # the LM head's training FLOPs, 6 x its parameters: the loop applies it at targets only
    )

    def step_flops(self, stats: StepStats) -> float:
        return (
            self.per_token * stats.tokens
            + self.per_target * stats.targets
            + self.per_squared_length * stats.squared_lengths
            + self.per_image_token * stats.image_tokens
            + self.per_view * stats.views
        )

    def mfu(self, stats: StepStats, sec_per_step: float, world_size: int) -> float:
        """MFU of one step that took `sec_per_step` on `world_size` devices."""
        return self.mfu_of_rate(self.step_flops(stats) / sec_per_step, world_size)

    def mfu_of_rate(self, flops_per_s: float, world_size: int) -> float:
        """MFU of a measured model FLOP rate (e.g. `progress.Throughput.flops_per_s`)."""
        return flops_per_s / (self.peak.flops * world_size)


def flop_model(model: Any, device: str) -> FlopModel:
    """FLOPs per unit of work of `model` (a meta-device copy is counted, so this costs no memory)
    and the peak of `device`, the worker's (`cpu`, `cuda:0`)."""
    meta = meta_sphinx(model.args)
    counts = parameter_counts(meta)
    cost = flops(meta, counts, model.args.llm.max_seq_len)
    head = cost["llm_lm_head_share_per_token"]
    return FlopModel(
        per_token=cost["llm_train_per_token_params_part"] - head,
        per_target=head,
        per_squared_length=cost["llm_attention_per_squared_length"],
        per_image_token=cost["projector_train_per_image_token"],
        per_view=cost["vision_forward_per_view"],
        peak=device_peak(device, torch.get_num_threads()),
    )


# ---------------------------------------------------------------------------- evaluation


def bits_per_byte(ce_sum_nats: float, target_bytes: int) -> float:
    """Bits per UTF-8 byte of the target text: the summed cross-entropy (nats) of the target tokens
    over the bytes of text they spell (`template.Encoded.target_bytes`), in bits. Unlike loss per
    token it does not depend on the tokenizer, so LLM bases with 32,000 and 92,544 entries compare
    (docs/training.md, "Held-out evaluation"). NaN when there is no target text."""
    return ce_sum_nats / math.log(2) / target_bytes if target_bytes > 0 else float("nan")
