"""Mixtral's sparse MoE FFN (8 experts, top-2, dropless) with our own load-balancing loss.

Design: docs/moe.md, "Expert kernels". In one paragraph: a fp32 softmax router with top-k and
renormalisation (Mixtral semantics), experts stored in MegaBlocks' dMoE GLU layout
(``experts.mlp.w1 / v1 / w2``, each ``[E_local * F, H]``) so the same state dict runs on every
kernel (``moe_kernels.py``), and a MegaBlocks-form load-balancing loss returned by each layer:
nothing lives in module-global state, so two models in one process and activation-checkpoint
recompute cannot double count.

Single-device code: expert parallelism is attached from outside
(``attach.attach_expert_parallel``); when attached, routed rows go through
``expert_parallel.dispatch`` / ``local_experts`` / ``combine`` around the kernel. Every kernel,
MegaBlocks included, takes the same routed rows (``moe_kernels`` says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sphinxx.model import moe_kernels
from sphinxx.model.expert_parallel import (
    ExpertParallel,
    combine,
    dispatch,
    local_experts,
)


@dataclass
class MoEArgs:
    dim: int  # model width H
    ffn_dim: int  # width F of one expert's SwiGLU
    num_experts: int = 8  # E, global
    top_k: int = 2
    aux_loss_coef: float = 0.01  # w in CE + w * mean_layers(L_aux); docs/moe.md, "Load-balancing loss"
    router_z_loss_coef: float = 0.0  # ST-MoE z-loss; Mixtral/SPHINX-MoE use none
    kernel: str = "auto"  # auto | loop | grouped (alias grouped_mm) | megablocks
    ep_size: int = 1  # expert-parallel group size; this layer holds num_experts / ep_size experts
    # Number of MoE layers in the model: each layer's aux is divided by it, so the model's SUM over
    # layers is the MEAN of docs/moe.md, "Load-balancing loss"
    num_layers: int = 1
    init_std: float = 0.02  # random init (debug flavors only)

    def __post_init__(self) -> None:
        for name in ("dim", "ffn_dim", "num_experts", "top_k", "ep_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"MoEArgs.{name} must be >= 1, got {getattr(self, name)}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.num_experts % self.ep_size:
            raise ValueError(f"num_experts={self.num_experts} must be divisible by ep_size={self.ep_size}")
        if self.aux_loss_coef < 0 or self.router_z_loss_coef < 0:
            raise ValueError("aux_loss_coef and router_z_loss_coef must be >= 0")
        self.kernel = moe_kernels.canonical_kernel(self.kernel)

    @property
    def num_local_experts(self) -> int:
        return self.num_experts // self.ep_size


class Router(nn.Module):
    """Mixtral router: logits in the compute dtype, softmax over all experts in fp32, top-k, L1 renorm."""

    def __init__(self, dim: int, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.layer = nn.Linear(dim, num_experts, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [T, H] -> (logits fp32 [T, E], probs fp32 [T, E], weights fp32 [T, k], expert ids [T, k])."""
        logits = self.layer(x).float()
        probs = logits.softmax(dim=-1)
        weights, ids = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, probs, weights, ids


class ExpertWeights(nn.Module):
    """The three expert matrices as single Parameters (one ZeRO-3 gather, MegaBlocks names)."""

    def __init__(self, num_local_experts: int, dim: int, ffn_dim: int):
        super().__init__()
        rows = num_local_experts * ffn_dim
        self.w1 = nn.Parameter(torch.empty(rows, dim))  # gate_proj (HF w1), expert-major rows
        self.v1 = nn.Parameter(torch.empty(rows, dim))  # up_proj (HF w3)
        self.w2 = nn.Parameter(torch.empty(rows, dim))  # down_proj (HF w2) transposed


class Experts(nn.Module):
    """Container so parameter names read ``experts.mlp.w1`` as in MegaBlocks ``dMoE``."""

    def __init__(self, num_local_experts: int, dim: int, ffn_dim: int):
        super().__init__()
        self.mlp = ExpertWeights(num_local_experts, dim, ffn_dim)


def load_balancing_loss(
    probs: torch.Tensor, expert_ids: torch.Tensor, num_experts: int, token_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MegaBlocks-form loss ``(E / (T k)) * sum_e count_e * meanprob_e`` on the unmasked tokens.

    ``probs`` [T, E] fp32, ``expert_ids`` [T, k]; ``token_mask`` [T] (True = counted; right padding is
    excluded by the caller's mask). Returns (loss, counts [E] float), 1.0 at perfect balance. No host
    sync: counts come from ``scatter_add`` and T stays a tensor.
    """
    num_tokens, top_k = expert_ids.shape
    if token_mask is None:
        keep = probs.new_ones(num_tokens)
    else:
        keep = token_mask.reshape(num_tokens).to(probs.dtype)
    counts = probs.new_zeros(num_experts).scatter_add_(
        0, expert_ids.reshape(-1), keep.repeat_interleave(top_k)
    )
    kept = keep.sum().clamp_min(1.0)
    mean_probs = (probs * keep[:, None]).sum(0) / kept
    loss = num_experts / (kept * top_k) * torch.dot(counts, mean_probs)
    return loss, counts


def router_z_loss(logits: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE z-loss: mean over tokens of logsumexp(logits)^2."""
    z = torch.logsumexp(logits, dim=-1).square()
    if token_mask is None:
        return z.mean()
    keep = token_mask.reshape(-1).to(z.dtype)
    return (z * keep).sum() / keep.sum().clamp_min(1.0)


class MoE(nn.Module):
    """Sparse FFN: ``forward(x [B, S, H]) -> (y [B, S, H], aux)``.

    ``aux`` is this layer's weighted share of the total loss: ``aux_loss_coef * L_l / num_layers``
    (+ z-loss likewise), so the model sums the layers' values. ``tokens_per_expert`` (detached,
    [E] float, unmasked tokens of the last forward) is there for metrics.
    """

    def __init__(self, args: MoEArgs):
        super().__init__()
        self.args = args
        self.router = Router(args.dim, args.num_experts, args.top_k)
        self.experts = Experts(args.num_local_experts, args.dim, args.ffn_dim)
        self.ep: ExpertParallel | None = None  # set by attach.attach_expert_parallel
        self.tokens_per_expert: torch.Tensor | None = None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Random init, N(0, init_std) (debug flavors; real runs load converted weights).

        Under EP each rank draws its own slice, so EP and non-EP runs differ unless weights are loaded.
        """
        for p in (self.router.layer.weight, *self.experts.mlp.parameters()):
            nn.init.normal_(p, mean=0.0, std=self.args.init_std)

    reset_parameters = init_weights  # nn.Module convention, e.g. after to_empty() from meta

    def forward(
        self, x: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S, H]; token_mask [B, S] bool (False = right padding, excluded from the aux loss)."""
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # [T, H]
        logits, probs, weights, ids = self.router(tokens)
        lb, counts = load_balancing_loss(probs, ids, self.args.num_experts, token_mask)
        aux = self.args.aux_loss_coef * lb
        if self.args.router_z_loss_coef > 0:
            aux = aux + self.args.router_z_loss_coef * router_z_loss(logits, token_mask)
        self.tokens_per_expert = counts.detach()
        # docs/moe.md, "Router": weights are cast to the activation dtype before the combine.
        y = self._experts(tokens, weights.to(x.dtype), ids)
        return y.view(shape), aux / self.args.num_layers

    def _experts(self, tokens: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """tokens [T, H], weights [T, k], ids [T, k] global expert ids -> [T, H]."""
        ep = self.ep if self.ep is not None and self.ep.size > 1 else None  # None: no EP group attached
        kernel = moe_kernels.resolve_kernel(self.args.kernel, tokens, self.args, ep is not None)
        glu = moe_kernels.GLU_KERNELS[kernel]
        num_tokens, top_k = ids.shape
        flat_ids = ids.reshape(-1)  # (token, slot) order
        order = torch.argsort(flat_ids, stable=True)
        src = order // top_k  # the token of each routed row
        rows = tokens.index_select(0, src)  # [T*k, H], grouped by global expert
        # scatter_add rather than bincount: no device-to-host sync on CUDA.
        counts = torch.zeros(self.args.num_experts, dtype=torch.long, device=ids.device)
        counts.scatter_add_(0, flat_ids, torch.ones_like(flat_ids))
        mlp = self.experts.mlp
        if ep is not None:
            received, recv_counts, state = dispatch(rows, counts, ep)
            out = combine(local_experts(received, recv_counts, glu, mlp.w1, mlp.v1, mlp.w2), state, ep)
        else:
            out = glu(rows, counts, mlp.w1, mlp.v1, mlp.w2)
        routed_weights = weights.reshape(-1).index_select(0, order)
        return _WeightedCombine.apply(out, routed_weights, src, num_tokens)


class _WeightedCombine(torch.autograd.Function):
    """The combine in routed order: each row times its routing weight, added into its token.

    ``index_add`` of ``w * y`` (no unpermute, no [T, k, H] einsum). Backward gathers the token
    grads once and takes both grads from them: dw as the row-wise dot with y, then dy by scaling
    the gathered block in place. On CPU the products run on blocks of rows that stay in cache
    (:data:`CPU_BLOCK_ROWS`), so no [T k, H] temporary is written; autograd's own graph of the
    product and the out-of-place ``index_add`` would write three and keep one more alive.
    """

    @staticmethod
    def forward(
        ctx: Any, y: torch.Tensor, w: torch.Tensor, src: torch.Tensor, num_tokens: int
    ) -> torch.Tensor:
        ctx.save_for_backward(y, w, src)
        out = y.new_zeros(num_tokens, y.shape[-1])
        tmp = y.new_empty(min(_block_rows(y), y.shape[0]), y.shape[-1])
        for lo, hi in _blocks(y):
            out.index_add_(0, src[lo:hi], torch.mul(y[lo:hi], w[lo:hi, None], out=tmp[: hi - lo]))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        y, w, src = ctx.saved_tensors
        need_y, need_w = ctx.needs_input_grad[:2]
        g = grad.index_select(0, src)  # [T k, H]: ours, becomes dy
        dw = w.new_empty(w.shape) if need_w else None
        tmp = y.new_empty(min(_block_rows(y), y.shape[0]), y.shape[-1])
        for lo, hi in _blocks(y):
            if dw is not None:
                torch.sum(torch.mul(g[lo:hi], y[lo:hi], out=tmp[: hi - lo]), dim=1, out=dw[lo:hi])
            if need_y:
                g[lo:hi].mul_(w[lo:hi, None])
        return (g if need_y else None), dw, None, None


CPU_BLOCK_ROWS = 512  # rows of [rows, H] blocks that stay in cache on CPU; other devices: one block


def _block_rows(t: torch.Tensor) -> int:
    return CPU_BLOCK_ROWS if t.device.type == "cpu" else max(t.shape[0], 1)


def _blocks(t: torch.Tensor) -> list[tuple[int, int]]:
    step = _block_rows(t)
    return [(lo, min(lo + step, t.shape[0])) for lo in range(0, t.shape[0], step)]
