"""Expert parallelism (EP) for the MoE layer: process groups, token dispatch/combine, param marks.

Why here and not in ``moe.py``: model code is single-device
(``docs/architecture.md, "Conventions the code follows"``); EP is attached from outside by
:func:`sphinxx.model.attach.attach_expert_parallel`, and the MoE layer only calls :func:`dispatch` /
:func:`local_experts` / :func:`combine` when a group is attached.

Topology (docs/moe.md, "Expert parallelism", DeepSpeed's convention so the dispatcher and the ZeRO optimizer
agree): EP groups are contiguous ranks ``[0..EP-1], [EP..2EP-1], ...``; expert-data-parallel (eDP)
groups are strided. EP rank r owns global experts ``[r*E/EP, (r+1)*E/EP)``.

Dispatch follows MegaBlocks' ``parallel_forward_once`` with torch collectives only:
``all_to_all_single`` with uneven splits works on gloo (CPU tests) and NCCL; the list form
``all_to_all`` does not exist on gloo. No gradient scaling happens here: an expert's grad on its
EP rank is the sum over all tokens of the EP group; the data-parallel reduction then divides by
the full DP world size (DeepSpeed >= PR #6546 does exactly that).

Three steps, so that the middle one can be checked without a process group: :func:`dispatch`
(the exchange), :func:`local_experts` (what one EP rank computes on the rows it received: a
regrouping by local expert, any kernel of ``moe_kernels``, the inverse regrouping) and
:func:`combine` (the reverse exchange). Every kernel, MegaBlocks included, runs behind this one
dispatcher; ``moe_kernels``' docstring says why MegaBlocks' own EP mode is not used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class ExpertParallel:
    """What an MoE layer needs to know about its EP group."""

    group: Any  # torch.distributed.ProcessGroup
    size: int
    rank: int

    @property
    def group_name(self) -> str:
        # DeepSpeed's name for the expert groups of this size (deepspeed/utils/groups.py).
        return f"ep_size_{self.size}"


def expert_range(num_experts: int, ep_size: int, ep_rank: int) -> range:
    """Global expert ids owned by ``ep_rank``."""
    if ep_size < 1 or num_experts % ep_size:
        raise ValueError(f"num_experts={num_experts} must be divisible by ep_size={ep_size}")
    if not 0 <= ep_rank < ep_size:
        raise ValueError(f"ep_rank={ep_rank} out of range for ep_size={ep_size}")
    per = num_experts // ep_size
    return range(ep_rank * per, (ep_rank + 1) * per)


def new_expert_parallel_groups(ep_size: int) -> tuple[ExpertParallel, Any]:
    """Create EP and eDP groups with plain torch.distributed (no DeepSpeed).

    Every rank must call this (``new_group`` is collective). Returns (this rank's EP, its eDP group).
    Under DeepSpeed use ``sphinxx.jobs.parallelize.deepspeed_expert_parallel`` instead, so the
    optimizer reduces expert grads over the very same eDP group.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    if ep_size < 1 or world % ep_size:
        raise ValueError(f"world size {world} must be divisible by ep_size={ep_size}")
    mine_ep = mine_edp = None
    for start in range(0, world, ep_size):
        ranks = list(range(start, start + ep_size))
        group = dist.new_group(ranks)
        if rank in ranks:
            mine_ep = group
    for offset in range(ep_size):
        ranks = list(range(offset, world, ep_size))
        group = dist.new_group(ranks)
        if rank in ranks:
            mine_edp = group
    ep = ExpertParallel(group=mine_ep, size=ep_size, rank=dist.get_rank(mine_ep))
    return ep, mine_edp


def mark_expert_params(params: list[nn.Parameter], group_name: str) -> None:
    """Mark expert params the way DeepSpeed's own experts are marked (deepspeed/moe/experts.py).

    ``deepspeed.moe.utils.is_moe_param`` tests ``allreduce is False``; ``group_name`` picks the
    param's MoE optimizer group and its eDP process group in ZeRO-1/2.
    """
    # Ad-hoc attributes that DeepSpeed reads off the Parameter (torch's Parameter declares neither).
    marks = {"allreduce": False, "group_name": group_name}
    for p in params:
        for name, value in marks.items():
            setattr(p, name, value)


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` on dim 0 with uneven splits; backward is the reverse exchange."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: Any
    ) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(
            out, x.contiguous(), output_split_sizes=out_splits, input_split_sizes=in_splits, group=group
        )
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        out_splits, in_splits = ctx.splits
        grad_in = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(
            grad_in,
            grad.contiguous(),
            output_split_sizes=in_splits,
            input_split_sizes=out_splits,
            group=ctx.group,
        )
        return grad_in, None, None, None


@dataclass
class DispatchState:
    """What :func:`combine` needs to undo :func:`dispatch`."""

    send_splits: list[int]
    recv_splits: list[int]


def dispatch(
    rows: torch.Tensor, counts: torch.Tensor, ep: ExpertParallel
) -> tuple[torch.Tensor, torch.Tensor, DispatchState]:
    """Send routed rows to the ranks owning their experts.

    ``rows`` [N, H] are grouped by global expert id (hence by destination rank); ``counts`` [E] is
    the number of rows per global expert. Returns the received rows [M, H] in arrival order
    (source-rank-major, each source's block grouped by local expert), ``recv_counts``
    [EP, E_local] (rows from source rank s for local expert e), and the state for :func:`combine`.
    """
    num_local = counts.numel() // ep.size
    send_counts = counts.view(ep.size, num_local).contiguous()
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=ep.group)  # [src rank, local expert]
    # The one host sync of the dispatcher: split sizes must be Python ints.
    send_splits = send_counts.sum(1).tolist()
    recv_splits = recv_counts.sum(1).tolist()
    received = _AllToAll.apply(rows, recv_splits, send_splits, ep.group)
    return received, recv_counts, DispatchState(send_splits=send_splits, recv_splits=recv_splits)


def combine(out_rows: torch.Tensor, state: DispatchState, ep: ExpertParallel) -> torch.Tensor:
    """Return expert outputs (in :func:`dispatch`'s arrival order) to the ranks their rows came from."""
    return _AllToAll.apply(out_rows, state.send_splits, state.recv_splits, ep.group)


def local_expert_order(
    recv_counts: torch.Tensor, num_rows: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Regrouping of ``num_rows`` arrived rows by local expert: ``(order, inverse, local_counts [E_local])``.

    ``recv_counts`` [S, E_local] describes rows arriving source-major; ``rows[order]`` is grouped
    by local expert, sources in arrival order within an expert (a stable sort), and
    ``grouped[inverse]`` restores the arrival order. ``num_rows`` (known on the host) spares
    ``repeat_interleave`` a device-to-host sync.
    """
    num_sources, num_local = recv_counts.shape
    block_ids = torch.arange(num_local, device=recv_counts.device).repeat(num_sources)
    local_ids = torch.repeat_interleave(block_ids, recv_counts.flatten(), output_size=num_rows)
    order = torch.argsort(local_ids, stable=True)
    return order, inverse_permutation(order), recv_counts.sum(0)


def inverse_permutation(order: torch.Tensor) -> torch.Tensor:
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return inverse


GluKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def local_experts(
    received: torch.Tensor,
    recv_counts: torch.Tensor,
    glu: GluKernel,
    w1: torch.Tensor,
    v1: torch.Tensor,
    w2: torch.Tensor,
) -> torch.Tensor:
    """What one EP rank computes: its local experts on the rows it received, in arrival order.

    ``received`` [M, H] and ``recv_counts`` [S, E_local] as :func:`dispatch` returns them (S = 1:
    no EP, rows already grouped by expert); ``glu`` one of ``moe_kernels``' kernels; w1, v1, w2
    this rank's ``[E_local * F, H]`` slices. Returns [M, H] in arrival order, ready for :func:`combine`.
    """
    if recv_counts.shape[0] == 1:
        return glu(received, recv_counts[0], w1, v1, w2)
    order, inverse, local_counts = local_expert_order(recv_counts, received.shape[0])
    return glu(received[order], local_counts, w1, v1, w2)[inverse]
