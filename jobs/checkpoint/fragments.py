"""Parameter layout and optimizer fragments: model and optimizer state in *global* coordinates.

ZeRO-1/2 shards the fp32 master weights and Adam moments over the data-parallel ranks, and
expert parallelism slices the experts over EP ranks, so nothing here is keyed by rank:

- `ParamSlot` / `param_slots`: every local parameter with its global shape and its flat offset in
  the global tensor; an expert slice also knows its global expert indices, so each expert is
  written as its own entries `<name>@expert<g>` (`expert_key`, `expert_split`) and any EP size
  reads the experts it owns.
- `Fragment`: a range of one flattened global tensor with its fp32 master weights and Adam
  moments. Each rank owns exactly some fragments: under ZeRO-1/2 its partition (DeepSpeed's
  `_hp_mapping` tells where each lies, the same linkage its `safe_get_local_*` tensor-fragment
  API uses); under ZeRO-0 whole tensors dealt round-robin (`local_fragments`). A restoring rank
  fills the ranges it owns now with overlap copies from whatever fragments were saved
  (`load_fragments`), at any world size.

Why not DeepSpeed universal checkpoints (`ds_to_universal.py`): that is an offline conversion
over all ranks' files that knows DeepSpeed's own MoE layers, not our expert layout, and needs a
conversion step between every resize. Why not gathering full tensors on one rank: it costs an
all-reduce of every parameter and moment per checkpoint and one rank's memory; fragments need no
collective at all, and on CPU with 2 gloo workers this restores bit-exactly at another size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sphinxx.model.moe import MoE

MOMENTS = ("exp_avg", "exp_avg_sq")


# ---------------------------------------------------------------------------- parameter layout


@dataclass(frozen=True)
class ParamSlot:
    """Where one local parameter sits in its global tensor."""

    name: str
    param: nn.Parameter
    global_shape: tuple[int, ...]
    offset: int = 0  # flat offset of the local tensor in the global one (EP slices)
    expert_first: int = -1  # first global expert held here; -1 = not an expert param
    num_local_experts: int = 0


def expert_layers(model: nn.Module) -> list[MoE]:
    """The MoE layers whose experts are (possibly EP-sliced) stacked tensors."""
    return [m for m in model.modules() if isinstance(m, MoE)]


def param_slots(model: nn.Module) -> list[ParamSlot]:
    """Every parameter with its global coordinates (expert params of EP-sliced MoE layers)."""
    expert_of: dict[int, tuple[int, int, int]] = {}  # id(param) -> (num_experts, local, ep_rank)
    for module in expert_layers(model):
        args = module.args
        ep = getattr(module, "ep", None)
        ep_rank = ep.rank if ep is not None and ep.size > 1 else 0
        for p in module.experts.parameters():
            expert_of[id(p)] = (args.num_experts, args.num_local_experts, ep_rank)
    slots = []
    for name, p in model.named_parameters():
        if id(p) not in expert_of:
            slots.append(ParamSlot(name, p, tuple(p.shape)))
            continue
        num_experts, local, ep_rank = expert_of[id(p)]
        rows = p.shape[0] * num_experts // local
        slots.append(ParamSlot(name, p, (rows, *p.shape[1:]), ep_rank * p.numel(), ep_rank * local, local))
    return slots


def expert_split(slot: ParamSlot, tensor: torch.Tensor) -> dict[int, torch.Tensor]:
    """Local expert tensor [E_local * F, ...] -> {global expert index: [F, ...]} (expert-major rows)."""
    return {
        slot.expert_first + i: chunk for i, chunk in enumerate(tensor.chunk(slot.num_local_experts, dim=0))
    }


def expert_key(name: str, expert: int) -> str:
    return f"{name}@expert{expert}"


def parse_expert_key(key: str) -> tuple[str, int] | None:
    """(parameter name, global expert index) of an `expert_key`; None for a dense tensor's key."""
    name, sep, expert = key.rpartition("@expert")
    return (name, int(expert)) if sep and expert.isdigit() else None


# ---------------------------------------------------------------------------- optimizer state


def _base_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer doing the update (inside DeepSpeed's ZeRO / bf16 wrappers, if any)."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


def uses_fragments(slots: list[ParamSlot]) -> bool:
    """True when DeepSpeed keeps separate partitioned fp32 masters (ZeRO-1/2, bf16 optimizer)."""
    return any(hasattr(s.param, "_hp_mapping") for s in slots)


def ensure_optimizer_state(optimizer: Any) -> None:
    """Create zero Adam state for every param the optimizer updates (torch creates it lazily at
    the first step; a restore fills it before that), then let DeepSpeed link its fragment views."""
    base = _base_optimizer(optimizer)
    for group in base.param_groups:
        for p in group["params"]:
            state = base.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    link = getattr(optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()


def adam_step(optimizer: Any) -> int:
    base = _base_optimizer(optimizer)
    for state in base.state.values():
        if "step" in state:
            return int(state["step"])
    return 0


def set_adam_step(optimizer: Any, step: int) -> None:
    base = _base_optimizer(optimizer)
    for state in base.state.values():
        if "step" in state:
            state["step"] = torch.tensor(float(step), dtype=state["step"].dtype, device=state["step"].device)


# ---------------------------------------------------------------------------- fragments


@dataclass
class Fragment:
    """A range [start, start + numel) of one flattened global tensor, with its values."""

    name: str
    start: int
    numel: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # "param", "exp_avg", "exp_avg_sq"


def _flat_partition(optimizer: Any, group_index: int) -> torch.Tensor:
    """The fp32 flat partition a param group's fragments live in (ZeRO-1/2 or the bf16 optimizer)."""
    for attr in ("single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
        groups = getattr(optimizer, attr, None)
        if groups is not None:
            return groups[group_index]
    raise TypeError(f"{type(optimizer).__name__} has no fp32 partitions; unsupported DeepSpeed optimizer")


def _moment_views(optimizer: Any, mapping: Any) -> dict[str, torch.Tensor]:
    """Views of a fragment's Adam moments in the base optimizer's state of its flat partition.

    Read from the state directly rather than `mapping.optim_fragment`: DeepSpeed 0.19.8 links
    those views once, after the first param group's update, so groups > 0 stay unlinked.
    """
    flat = _flat_partition(optimizer, mapping.param_group_index)
    state = _base_optimizer(optimizer).state.get(flat, {})
    addr = mapping.hp_fragment_address
    return {k: state[k].narrow(0, addr.start, addr.numel) for k in MOMENTS if k in state}


HostCopy = Callable[[str, torch.Tensor], torch.Tensor]  # (key, tensor) -> a copy in host memory


def clone_to_host(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """A copy of `tensor` in host memory that training can no longer change."""
    return tensor.detach().cpu().clone()


def local_fragments(
    slots: list[ParamSlot], optimizer: Any, owner: dict[str, bool], to_host: HostCopy = clone_to_host
) -> list[Fragment]:
    """The fragments of master weights and moments this rank owns (see the module docstring),
    copied to host memory by `to_host` (keyed `<name>/<tensor kind>`)."""
    frags = []
    if uses_fragments(slots):
        for s in slots:
            # Partitions are disjoint across ranks: every rank writes its own, whatever `owner` says.
            mapping = getattr(s.param, "_hp_mapping", None)
            if mapping is None:
                continue
            addr = mapping.lp_fragment_address
            tensors = {"param": mapping.hp_fragment, **_moment_views(optimizer, mapping)}
            tensors = {k: to_host(f"{s.name}/{k}", v.detach().float()) for k, v in tensors.items()}
            frags.append(Fragment(s.name, s.offset + addr.start, addr.numel, tensors))
        return frags
    base = _base_optimizer(optimizer)
    for s in slots:
        if not owner[s.name] or not s.param.requires_grad:
            continue
        state = base.state.get(s.param, {})
        tensors = {
            k: to_host(f"{s.name}/{k}", state[k].detach().float().reshape(-1)) for k in MOMENTS if k in state
        }
        frags.append(Fragment(s.name, s.offset, s.param.numel(), tensors))
    return frags


def owned_ranges(slots: list[ParamSlot]) -> dict[str, list[tuple[int, int]]]:
    """Per parameter name, the [lo, hi) ranges of its flattened global tensor this rank now fills
    on restore: its ZeRO partition, else each whole trainable tensor (offset by its EP slice)."""
    need: dict[str, list[tuple[int, int]]] = {}
    fragment_mode = uses_fragments(slots)
    for s in slots:
        if not s.param.requires_grad:
            continue
        if not fragment_mode:
            need.setdefault(s.name, []).append((s.offset, s.offset + s.param.numel()))
            continue
        mapping = getattr(s.param, "_hp_mapping", None)
        if mapping is not None:  # None: no part of this parameter is in this rank's partition
            start = s.offset + mapping.lp_fragment_address.start
            need.setdefault(s.name, []).append((start, start + mapping.lp_fragment_address.numel))
    return need


def _fill(target: torch.Tensor, start: int, fragments: Iterable[Fragment], key: str) -> int:
    """Copy the overlap of every fragment into `target` (flat, global range starting at `start`)."""
    flat, end, filled = target.view(-1), start + target.numel(), 0
    for frag in fragments:
        lo, hi = max(start, frag.start), min(end, frag.start + frag.numel)
        if lo >= hi or key not in frag.tensors:
            continue
        src = frag.tensors[key][lo - frag.start : hi - frag.start]
        flat[lo - start : hi - start].copy_(src.to(flat.dtype))
        filled += hi - lo
    return filled


@torch.no_grad()
def load_fragments(slots: list[ParamSlot], optimizer: Any, by_name: dict[str, list[Fragment]]) -> None:
    """Fill this rank's masters and moments from saved fragments; error if anything is missing."""
    ensure_optimizer_state(optimizer)
    if uses_fragments(slots):
        for s in slots:
            mapping = getattr(s.param, "_hp_mapping", None)
            if mapping is None:
                continue
            start = s.offset + mapping.lp_fragment_address.start
            frags = by_name.get(s.name, [])
            targets = {"param": mapping.hp_fragment, **_moment_views(optimizer, mapping)}
            for key, target in targets.items():
                _require(_fill(target, start, frags, key), target.numel(), s.name, key)
        return
    base = _base_optimizer(optimizer)
    for s in slots:
        if not s.param.requires_grad or s.param not in base.state:
            continue
        for key in MOMENTS:
            target = base.state[s.param][key]
            _require(_fill(target, s.offset, by_name.get(s.name, []), key), target.numel(), s.name, key)


def _require(filled: int, needed: int, name: str, key: str) -> None:
    if filled != needed:
        raise ValueError(
            f"checkpoint holds {filled} of {needed} values of {key} for {name}: "
            "its optimizer fragments do not cover this parameter (a different model config?)"
        )
