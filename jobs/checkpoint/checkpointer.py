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

A save first takes a snapshot of the rank's files in host memory (`snapshot.py`: pinned buffers
for GPU tensors) at the step boundary. `save` then serialises and uploads them and commits before
it returns; `save_async` returns at once and leaves that to a background thread
(`background.py`), while training goes on. Either way the files go from memory to the store (or
through `storage.scratch`, a mounted volume, when one is configured), never through the
container's temp disk, and they are the same files: an asynchronous checkpoint restores exactly
as a synchronous one. At most one save is in flight; `save`, `drain` and the next `save_async`
wait for it, and a failed one raises `CheckpointSaveError` there or at the next `check()`.
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

from sphinxx.jobs.checkpoint.background import CheckpointSaveError, InFlight
from sphinxx.jobs.checkpoint.dist import all_gather, barrier, broadcast, reseed, set_rng_state
from sphinxx.jobs.checkpoint.fragments import (
    Fragment,
    expert_key,
    load_fragments,
    owned_ranges,
    param_slots,
    set_adam_step,
)
from sphinxx.jobs.checkpoint.snapshot import (
    FORMAT,
    HostCopier,
    RankLayout,
    Snapshot,
    rank_name,
    serialize,
    spill,
    take_snapshot,
)
from sphinxx.storage import CheckpointInfo, CheckpointStore, CommitMetadata, RetentionPolicy, WriterRecord

# How long rank 0's background commit waits for the other ranks' writer records: they upload as
# much as it does, at the same time; a rank that failed raises on its own at its next step.
RECORD_WAIT_S = 900.0


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
        scratch: str | None = None,
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
        self.layout = RankLayout(
            rank, world_size, self.slots, self.dense_owner, self.expert_writer, self._owner()
        )
        # A mounted volume to serialise through (`storage.scratch`); None: straight from memory.
        self.scratch = scratch
        self.copier = HostCopier()
        self.inflight = InFlight()
        self._landed: list[CheckpointInfo] = []

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
        """Write this rank's files, commit on rank 0, apply retention, all before returning (a save
        in flight is drained first). Returns the CheckpointInfo on rank 0, None elsewhere. Every
        rank must call it at the same step."""
        self.drain()
        snapshot = self._snapshot(state, rank_data)
        records = all_gather(self._write(snapshot))
        info = None
        if self.rank == 0:
            info = self.store.commit(state.step, self.world_size, self._meta(metrics, final), writers=records)
            self._retain()
        barrier()
        return info

    def save_async(self, state: RunState, rank_data: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Snapshot this rank's state to host memory and return; the files are serialised and
        uploaded, and rank 0 commits, in the background (`background.InFlight`). A save still in
        flight is waited for first (and logged). Every rank must call it at the same step."""
        self.drain()
        snapshot = self._snapshot(state, rank_data)
        meta = self._meta(metrics, final=False)
        self.inflight.start(snapshot.step, lambda: self._write_and_commit(snapshot, meta))

    def check(self) -> None:
        """Raise `CheckpointSaveError` if a background save failed (cheap: once per step)."""
        self.inflight.check()

    def drain(self) -> None:
        """Wait for the save in flight; every rank then raises if any rank's failed (one gather:
        every rank must call it at the same step). Its commit joins `landed()`."""
        step = self.inflight.step
        outcome, waited = self.inflight.wait()
        if outcome is None:
            return
        if waited > 0.01 and self.rank == 0:
            print(f"[sphinxx] waited {waited:.2f} s for the checkpoint of step {step} to commit", flush=True)
        failures = [e for e in all_gather(outcome.describe_error()) if e is not None]
        if failures:
            raise CheckpointSaveError(outcome.step, failures[0]) from outcome.error
        if isinstance(outcome.result, CheckpointInfo):
            self._landed.append(outcome.result)

    def landed(self) -> list[CheckpointInfo]:
        """Rank 0: the background commits that finished since the last call (for MLflow and Ray)."""
        done, self._landed = self._landed, []
        return done

    def _snapshot(self, state: RunState, rank_data: dict[str, Any]) -> Snapshot:
        """Rank 0 readies the step's folder; after a barrier every rank copies its files to host."""
        if self.rank == 0:
            self.store.prepare(state.step)
        barrier()
        files = take_snapshot(self.layout, self.optimizer, dict(state.__dict__), rank_data, self.copier)
        self.copier.sync()
        return Snapshot(state.step, files)

    def _write(self, snapshot: Snapshot) -> WriterRecord:
        """Upload the snapshot's files one at a time (memory: one serialised file beside the
        snapshot), from memory or through the scratch volume; this rank's writer record."""
        with self.store.writer(snapshot.step, self.rank, self.world_size) as writer:
            while snapshot.files:
                relpath, content = snapshot.files.pop(0)  # its tensors are freed once uploaded
                if self.scratch is None:
                    writer.upload_bytes([(serialize(content), relpath)])
                    continue
                local = os.path.join(self.scratch, f"sphinxx-ckpt-{snapshot.step}-{self.rank}", relpath)
                try:
                    spill(content, local)
                    writer.upload_files([(local, relpath)])
                finally:
                    if os.path.exists(local):
                        os.unlink(local)
        return writer.finish()

    def _write_and_commit(self, snapshot: Snapshot, meta: CommitMetadata) -> CheckpointInfo | None:
        """The background half of an asynchronous save. Rank 0 reads the writer records from the
        store (no collective leaves the training thread), waiting for the other ranks' uploads."""
        self._write(snapshot)
        if self.rank != 0:
            return None
        info = self.store.commit(snapshot.step, self.world_size, meta, wait_s=RECORD_WAIT_S)
        self._retain()
        return info

    def _meta(self, metrics: dict[str, Any], final: bool) -> CommitMetadata:
        return CommitMetadata(
            world_size=self.world_size,
            metrics={
                k: v if isinstance(v, dict) else float(v) for k, v in metrics.items()
            },  # `benchmarks`: a record
            final=final,
            **self.metadata,
        )

    def _retain(self) -> None:
        if self.policy is not None:
            self.store.apply_retention(self.policy)

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
        mine = f"extra/{rank_name(self.rank)}.pt"
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
