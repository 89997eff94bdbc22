"""Save and restore a training run through `sphinxx.storage`, loadable at any world size.

A checkpoint must restore *exactly* after an elastic resize or a retry with fewer workers
(orchestration.md 3.4, 6.4). ZeRO-1/2 shards the fp32 master weights and Adam moments over the
data-parallel ranks, and expert parallelism slices the experts over EP ranks, so DeepSpeed's own
per-rank files only load at the world size that wrote them.

The choice: we write model and optimizer state keyed by *global* coordinates, never by rank.

- `model/`: the weights as the model holds them, one tensor per parameter name (full tensors,
  non-expert params dealt round-robin over ranks so the writes run in parallel), and each expert
  as its own entries `<name>@expert<g>` keyed by its global expert index `g`, in
  `model/expert-<g>.pt`. Any EP size reads the experts it owns. These files are also what
  evaluation or export would read (a plain state dict once the expert entries are stacked).
- `optim/`: fp32 master weights and Adam moments as *fragments*: (parameter name, range of the
  flattened global tensor, values). Each rank writes exactly the fragments it owns: under
  ZeRO-1/2 those are its partition (DeepSpeed's `_hp_mapping` tells where each lies, the same
  linkage its `safe_get_local_*` tensor-fragment API uses); under ZeRO-0 whole tensors dealt
  round-robin. A `rank-<r>.json` index lists each file's ranges, so a restoring rank downloads
  only the files overlapping the ranges it owns now, and fills them with overlap copies.

Why not DeepSpeed universal checkpoints (`ds_to_universal.py`): that is an offline conversion
over all ranks' files that knows DeepSpeed's own MoE layers, not our expert layout, and needs a
conversion step between every resize. Why not gathering full tensors on one rank: it costs an
all-reduce of every parameter and moment per checkpoint and one rank's memory; fragments need no
collective at all, and on CPU with 2 gloo workers this restores bit-exactly at another size.

Around them: `extra/state.json` (rank 0: step, data sampler, schedule, counters),
`extra/rank-<r>.pt` (that rank's RNG states and data-loader counts; a rank that did not exist
before reseeds from (seed, step, rank)). The commit protocol is the store's (orchestration 6.2).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from sphinxx.storage import CheckpointInfo, CheckpointStore, CommitMetadata, RetentionPolicy

log = logging.getLogger("sphinxx.checkpointing")
FORMAT = 1
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


def param_slots(model: nn.Module) -> list[ParamSlot]:
    """Every parameter with its global coordinates (expert params of EP-sliced MoE layers)."""
    expert_of: dict[int, tuple[int, int, int]] = {}  # id(param) -> (num_experts, local, ep_rank)
    for module in model.modules():
        args, experts = getattr(module, "args", None), getattr(module, "experts", None)
        if experts is None or not hasattr(args, "num_local_experts"):
            continue
        ep = getattr(module, "ep", None)
        ep_rank = ep.rank if ep is not None and ep.size > 1 else 0
        for p in experts.parameters():
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


def _expert_split(slot: ParamSlot, tensor: torch.Tensor) -> dict[int, torch.Tensor]:
    """Local expert tensor [E_local * F, ...] -> {global expert index: [F, ...]} (expert-major rows)."""
    return {
        slot.expert_first + i: chunk for i, chunk in enumerate(tensor.chunk(slot.num_local_experts, dim=0))
    }


def _expert_key(name: str, expert: int) -> str:
    return f"{name}@expert{expert}"


# ---------------------------------------------------------------------------- optimizer fragments


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


def local_fragments(slots: list[ParamSlot], optimizer: Any, owner: dict[str, bool]) -> list[Fragment]:
    """The fragments of master weights and moments this rank owns (see the module docstring)."""
    frags = []
    if uses_fragments(slots):
        for s in slots:
            # Partitions are disjoint across ranks: every rank writes its own, whatever `owner` says.
            mapping = getattr(s.param, "_hp_mapping", None)
            if mapping is None:
                continue
            addr = mapping.lp_fragment_address
            tensors = {"param": mapping.hp_fragment, **_moment_views(optimizer, mapping)}
            tensors = {k: v.detach().float().cpu().clone() for k, v in tensors.items()}
            frags.append(Fragment(s.name, s.offset + addr.start, addr.numel, tensors))
        return frags
    base = _base_optimizer(optimizer)
    for s in slots:
        if not owner[s.name] or not s.param.requires_grad:
            continue
        state = base.state.get(s.param, {})
        tensors = {k: state[k].detach().float().cpu().reshape(-1).clone() for k in MOMENTS if k in state}
        frags.append(Fragment(s.name, s.offset, s.param.numel(), tensors))
    return frags


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


# ---------------------------------------------------------------------------- the checkpointer


@dataclass
class RunState:
    """Everything besides weights and optimizer that a resume needs (rank 0 saves it)."""

    step: int  # optimizer steps done = index of the next global batch
    sampler: dict[str, Any]  # DataStream.state_dict()["sampler"] (identical on every rank)
    schedule: dict[str, Any]
    tokens_seen: int = 0
    samples_seen: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Restored:
    state: RunState
    rank_data: dict[str, Any] | None  # this rank's data-loader counts, if the rank existed
    info: CheckpointInfo


def _rank_name(rank: int) -> str:
    return f"rank-{rank:05d}"


class Checkpointer:
    """Save/restore of one worker's model + optimizer + run state (every rank calls both)."""

    def __init__(
        self,
        store: CheckpointStore,
        model: nn.Module,
        optimizer: Any,
        rank: int,
        world_size: int,
        seed: int = 0,
        skip_prefixes: tuple[str, ...] = (),
        metadata: dict[str, Any] | None = None,
        policy: RetentionPolicy | None = None,
    ):
        self.store, self.model, self.optimizer = store, model, optimizer
        self.rank, self.world_size, self.seed = rank, world_size, seed
        # Frozen towers loaded from their own source are not copied into every checkpoint.
        self.skip_prefixes = skip_prefixes
        self.metadata = metadata or {}
        self.policy = policy
        self.slots = [s for s in param_slots(model) if not s.name.startswith(skip_prefixes)]
        dense = [s.name for s in self.slots if s.expert_first < 0]
        # Round-robin over ranks: each rank writes (and later reads) a share of the dense tensors.
        self.dense_owner = {name: i % world_size == rank for i, name in enumerate(dense)}
        # Expert slices are identical across eDP replicas: the first replica (ranks 0..EP-1 with
        # DeepSpeed's contiguous EP groups) writes them. Under ZeRO the fragment mapping decides.
        self.expert_writer = self._is_first_expert_replica()

    def _is_first_expert_replica(self) -> bool:
        for module in self.model.modules():
            ep = getattr(module, "ep", None)
            if ep is not None and getattr(ep, "size", 1) > 1:
                return self.rank < ep.size
        return self.rank == 0

    def _owner(self) -> dict[str, bool]:
        owner = dict(self.dense_owner)
        owner.update({s.name: self.expert_writer for s in self.slots if s.expert_first >= 0})
        return owner

    # -- save --------------------------------------------------------------------------------
    def save(
        self, state: RunState, rank_data: dict[str, Any], metrics: dict[str, float], final: bool = False
    ):
        """Write this rank's files, commit on rank 0, apply retention. Returns the CheckpointInfo
        on rank 0, None elsewhere. Every rank must call it at the same step."""
        step = state.step
        if self.rank == 0:
            self.store.prepare(step)
        _barrier()
        local = tempfile.mkdtemp(prefix=f"sphinxx-ckpt-{step}-")
        try:
            self._write_local(local, state, rank_data)
            with self.store.writer(step, self.rank, self.world_size) as writer:
                writer.upload_dir(local)
            records = _all_gather(writer.finish())
        finally:
            shutil.rmtree(local, ignore_errors=True)
        info = None
        if self.rank == 0:
            meta = CommitMetadata(
                world_size=self.world_size,
                metrics={k: float(v) for k, v in metrics.items()},
                final=final,
                **self.metadata,
            )
            info = self.store.commit(step, self.world_size, meta, writers=records)
            if self.policy is not None:
                self.store.apply_retention(self.policy)
        _barrier()
        return info

    def _write_local(self, local: str, state: RunState, rank_data: dict[str, Any]) -> None:
        name = _rank_name(self.rank)
        os.makedirs(os.path.join(local, "model"))
        os.makedirs(os.path.join(local, "optim"))
        os.makedirs(os.path.join(local, "extra"))
        dense = {
            s.name: s.param.detach().cpu().clone()
            for s in self.slots
            if s.expert_first < 0 and self.dense_owner[s.name]
        }
        if dense:
            torch.save(dense, os.path.join(local, "model", f"dense-{name}.pt"))
        if self.expert_writer:
            experts: dict[int, dict[str, torch.Tensor]] = {}
            for s in self.slots:
                if s.expert_first >= 0:
                    for g, t in _expert_split(s, s.param.detach().cpu()).items():
                        experts.setdefault(g, {})[_expert_key(s.name, g)] = t.clone()
            for g, tensors in experts.items():
                torch.save(tensors, os.path.join(local, "model", f"expert-{g:05d}.pt"))
        frags = local_fragments(self.slots, self.optimizer, self._owner())
        if frags:
            torch.save(
                {"adam_step": adam_step(self.optimizer), "fragments": [f.__dict__ for f in frags]},
                os.path.join(local, "optim", f"{name}.pt"),
            )
            index = [{"name": f.name, "start": f.start, "numel": f.numel} for f in frags]
            with open(os.path.join(local, "optim", f"{name}.json"), "w") as fh:
                json.dump(index, fh)
        torch.save({"rng": rng_state(), "data": rank_data}, os.path.join(local, "extra", f"{name}.pt"))
        if self.rank == 0:
            body = {"format": FORMAT, "world_size": self.world_size, **state.__dict__}
            with open(os.path.join(local, "extra", "state.json"), "w") as fh:
                json.dump(body, fh, indent=1, sort_keys=True)

    # -- restore -----------------------------------------------------------------------------
    def restore(self, step: int | None = None) -> Restored | None:
        """Load the latest committed checkpoint (or `step`) into model + optimizer; None if none.

        Every rank reads the manifest itself (the store only returns committed steps); rank 0's
        choice is broadcast so that all ranks load the same step.
        """
        chosen = None
        if self.rank == 0:
            info = self.store.latest() if step is None else self.store.get(step)
            chosen = None if info is None else info.step
        chosen = _broadcast(chosen)
        if chosen is None:
            return None
        info = self.store.get(chosen)
        local = tempfile.mkdtemp(prefix=f"sphinxx-restore-{chosen}-")
        try:
            restored = self._restore_from(info, local)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        _barrier()
        return restored

    def _restore_from(self, info: CheckpointInfo, local: str) -> Restored:
        paths = {f.path for f in info.manifest.files}
        mine = f"extra/{_rank_name(self.rank)}.pt"
        wanted_experts = {
            f"model/expert-{g:05d}.pt"
            for s in self.slots
            if s.expert_first >= 0
            for g in range(s.expert_first, s.expert_first + s.num_local_experts)
        }
        first = {p for p in paths if p.startswith("model/dense-") or p.endswith(".json") or p == mine}
        self.store.download(info.step, local, select=lambda e: e.path in first | wanted_experts)
        with open(os.path.join(local, "extra", "state.json")) as fh:
            body = json.load(fh)
        if body.get("format") != FORMAT:
            raise ValueError(
                f"checkpoint {info.uri} has format {body.get('format')}, this code reads {FORMAT}"
            )
        self._load_model(local)
        needed = self._overlapping_optim_files(local, info)
        self.store.download(info.step, local, select=lambda e: e.path in needed)
        by_name: dict[str, list[Fragment]] = {}
        saved_step = 0
        for path in sorted(needed):
            blob = torch.load(os.path.join(local, *path.split("/")), map_location="cpu", weights_only=True)
            saved_step = blob["adam_step"]
            for raw in blob["fragments"]:
                by_name.setdefault(raw["name"], []).append(Fragment(**raw))
        load_fragments(self.slots, self.optimizer, by_name)
        set_adam_step(self.optimizer, saved_step)
        rank_file = os.path.join(local, *mine.split("/"))
        rank_data = None
        if os.path.exists(rank_file):
            blob = torch.load(rank_file, map_location="cpu", weights_only=False)
            set_rng_state(blob["rng"])
            rank_data = blob["data"]
        else:
            reseed(self.seed, body["step"], self.rank)
        fields = {k: body[k] for k in RunState.__dataclass_fields__ if k in body}
        return Restored(RunState(**fields), rank_data, info)

    def _load_model(self, local: str) -> None:
        tensors: dict[str, torch.Tensor] = {}
        model_dir = os.path.join(local, "model")
        for name in sorted(os.listdir(model_dir)) if os.path.isdir(model_dir) else []:
            tensors.update(torch.load(os.path.join(model_dir, name), map_location="cpu", weights_only=True))
        with torch.no_grad():
            for s in self.slots:
                if s.expert_first < 0:
                    value = _take(tensors, s.name)
                else:
                    parts = [
                        _take(tensors, _expert_key(s.name, g))
                        for g in range(s.expert_first, s.expert_first + s.num_local_experts)
                    ]
                    value = torch.cat(parts, dim=0)
                if tuple(value.shape) != tuple(s.param.shape):
                    raise ValueError(
                        f"checkpoint tensor {s.name} has shape {tuple(value.shape)}, the model {tuple(s.param.shape)}"
                    )
                s.param.copy_(value.to(s.param.dtype))

    def _overlapping_optim_files(self, local: str, info: CheckpointInfo) -> set[str]:
        """optim/*.pt files holding any range this rank needs now (read from the small indexes)."""
        need: dict[str, list[tuple[int, int]]] = {}
        fragment_mode = uses_fragments(self.slots)
        for s in self.slots:
            if not s.param.requires_grad:
                continue
            mapping = getattr(s.param, "_hp_mapping", None)
            if fragment_mode and mapping is None:
                continue
            if fragment_mode:
                start = s.offset + mapping.lp_fragment_address.start
                need.setdefault(s.name, []).append((start, start + mapping.lp_fragment_address.numel))
            else:
                need.setdefault(s.name, []).append((s.offset, s.offset + s.param.numel()))
        files = set()
        for entry in info.manifest.files:
            if not (entry.path.startswith("optim/") and entry.path.endswith(".json")):
                continue
            with open(os.path.join(local, *entry.path.split("/"))) as fh:
                index = json.load(fh)
            for item in index:
                lo, hi = item["start"], item["start"] + item["numel"]
                if any(a < hi and lo < b for a, b in need.get(item["name"], [])):
                    files.add(entry.path[: -len(".json")] + ".pt")
                    break
        return files


def _take(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in tensors:
        raise ValueError(f"checkpoint has no weights for {key} (a different model config?)")
    return tensors[key]


# ---------------------------------------------------------------------------- RNG and collectives


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def reseed(seed: int, step: int, rank: int) -> None:
    """A deterministic RNG state for a rank that has no saved one (the world grew)."""
    value = (seed * 1_000_003 + step * 7919 + rank) % (2**32)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def _all_gather(obj: Any) -> list[Any]:
    if not _distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _broadcast(obj: Any) -> Any:
    if not _distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
