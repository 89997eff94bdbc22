"""The checkpoint of a training run: its files, and the save/restore protocol every rank runs.

A checkpoint restores at any world size because everything in it is keyed by global coordinates
(`fragments`). Its files, under one committed step of the store:

- `model/`: the weights as the model holds them, one tensor per parameter name (full tensors,
  non-expert params dealt round-robin over ranks so the writes run in parallel), and each expert
  as its own entries `<name>@expert<g>` keyed by its global expert index `g`, in
  `model/expert-<g>.pt`. Any EP size reads the experts it owns. These files are also what
  evaluation or export would read (a plain state dict once the expert entries are stacked).
- `optim/`: fp32 master weights and Adam moments as fragments (parameter name, range of the
  flattened global tensor, values), `rank-<r>.pt` per writing rank. A `rank-<r>.json` index
  lists each file's ranges, so a restoring rank downloads only the files overlapping the ranges
  it owns now, and fills them with overlap copies.
- `extra/state.json` (rank 0: step, data sampler, schedule, counters), `extra/rank-<r>.pt` (that
  rank's RNG states and data-loader counts; a rank that did not exist before reseeds from
  (seed, step, rank)).

The commit protocol is the store's (docs/storage.md, "Commit protocol"): every rank uploads its files, rank 0
commits the manifest (with the metrics the trainer passes: they become `manifest.metrics`) and
applies retention. On restore rank 0 picks the step and every rank loads it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sphinxx.jobs.checkpoint.dist import all_gather, barrier, broadcast, reseed, rng_state, set_rng_state
from sphinxx.jobs.checkpoint.fragments import (
    Fragment,
    adam_step,
    expert_key,
    expert_split,
    load_fragments,
    local_fragments,
    owned_ranges,
    param_slots,
    set_adam_step,
)
from sphinxx.storage import CheckpointInfo, CheckpointStore, CommitMetadata, RetentionPolicy

FORMAT = 1


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
        self, state: RunState, rank_data: dict[str, Any], metrics: dict[str, Any], final: bool = False
    ) -> CheckpointInfo | None:
        """Write this rank's files, commit on rank 0, apply retention. Returns the CheckpointInfo
        on rank 0, None elsewhere. Every rank must call it at the same step."""
        step = state.step
        if self.rank == 0:
            self.store.prepare(step)
        barrier()
        local = tempfile.mkdtemp(prefix=f"sphinxx-ckpt-{step}-")
        try:
            self._write_local(local, state, rank_data)
            with self.store.writer(step, self.rank, self.world_size) as writer:
                writer.upload_dir(local)
            records = all_gather(writer.finish())
        finally:
            shutil.rmtree(local, ignore_errors=True)
        info = None
        if self.rank == 0:
            meta = CommitMetadata(
                world_size=self.world_size,
                metrics={
                    k: v if isinstance(v, dict) else float(v) for k, v in metrics.items()
                },  # `benchmarks`: a record
                final=final,
                **self.metadata,
            )
            info = self.store.commit(step, self.world_size, meta, writers=records)
            if self.policy is not None:
                self.store.apply_retention(self.policy)
        barrier()
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
                    for g, t in expert_split(s, s.param.detach().cpu()).items():
                        experts.setdefault(g, {})[expert_key(s.name, g)] = t.clone()
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
        chosen = broadcast(chosen)
        if chosen is None:
            return None
        info = self.store.get(chosen)
        local = tempfile.mkdtemp(prefix=f"sphinxx-restore-{chosen}-")
        try:
            restored = self._restore_from(info, local)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        barrier()
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
                        _take(tensors, expert_key(s.name, g))
                        for g in range(s.expert_first, s.expert_first + s.num_local_experts)
                    ]
                    value = torch.cat(parts, dim=0)
                if tuple(value.shape) != tuple(s.param.shape):
                    raise ValueError(
                        f"checkpoint tensor {s.name} has shape {tuple(value.shape)}, "
                        f"the model {tuple(s.param.shape)}"
                    )
                s.param.copy_(value.to(s.param.dtype))

    def _overlapping_optim_files(self, local: str, info: CheckpointInfo) -> set[str]:
        """optim/*.pt files holding any range this rank needs now (read from the small indexes)."""
        need = owned_ranges(self.slots)
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
