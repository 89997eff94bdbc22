"""A snapshot of one rank's checkpoint files in host memory, and their bytes.

A save takes the snapshot at the step boundary, while training waits: every tensor the rank writes
is copied to host memory (`HostCopier`), and the small parts (RNG states, the data-loader counts,
rank 0's run state) are captured as they are then. From there on training may change the model
and the optimizer: the snapshot is what the checkpoint holds, whether its files are serialised
and uploaded now (a synchronous save) or in the background (an asynchronous one,
`jobs/checkpoint/background.py`). The files and their names are those of the checkpoint layout
(`checkpointer.py`'s module docstring), so either way restores the same.

`serialize` turns one file of the snapshot into its bytes (`torch.save` into memory: no
container disk); `spill` writes it to a scratch volume instead (`storage.scratch`).
"""

from __future__ import annotations

import copy
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sphinxx.jobs.checkpoint.dist import rng_state
from sphinxx.jobs.checkpoint.fragments import ParamSlot, adam_step, expert_key, expert_split, local_fragments

FORMAT = 1  # extra/state.json's "format": what this code reads


def rank_name(rank: int) -> str:
    return f"rank-{rank:05d}"


class HostCopier:
    """Copies of device tensors in host memory: pinned, reused buffers for CUDA tensors (copied
    without blocking, then one synchronize), fresh clones of CPU tensors.

    Pinned buffers are kept from one save to the next (pinning host memory costs far more than
    copying into it), keyed by what they hold. Reuse is safe because at most one save is in flight:
    the next snapshot is taken only after the previous one's files were uploaded.
    """

    def __init__(self) -> None:
        self._pinned: dict[str, torch.Tensor] = {}
        self._pending_cuda = False

    def __call__(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if not tensor.is_cuda:
            return tensor.clone()
        buf = self._pinned.get(key)
        if buf is None or buf.shape != tensor.shape or buf.dtype != tensor.dtype:
            buf = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._pinned[key] = buf
        buf.copy_(tensor, non_blocking=True)
        self._pending_cuda = True
        return buf

    def sync(self) -> None:
        """Wait until every copy from the GPU has landed (before training changes the source)."""
        if self._pending_cuda:
            torch.cuda.synchronize()
            self._pending_cuda = False

    @property
    def pinned_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._pinned.values())


@dataclass
class Snapshot:
    """One rank's files of the checkpoint of `step`: (name in the checkpoint, content) in writing
    order; a content is bytes (JSON, written as is) or an object `torch.save` serialises."""

    step: int
    files: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def tensor_bytes(self) -> int:
        """Host memory the snapshot's tensors hold."""
        return sum(_tensor_bytes(content) for _, content in self.files)


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


@dataclass(frozen=True)
class RankLayout:
    """What this rank writes: the dense tensors it owns, whether it writes the experts, and which
    parameters' optimizer state it owns (`Checkpointer` decides, once)."""

    rank: int
    world_size: int
    slots: list[ParamSlot]
    dense_owner: dict[str, bool]
    expert_writer: bool
    owner: dict[str, bool]


def take_snapshot(
    layout: RankLayout,
    optimizer: Any,
    run_state: dict[str, Any],
    rank_data: dict[str, Any],
    to_host: Callable[[str, torch.Tensor], torch.Tensor],
) -> list[tuple[str, Any]]:
    """This rank's checkpoint files as they are now (see the module docstring)."""
    name = rank_name(layout.rank)
    files: list[tuple[str, Any]] = []
    dense = {
        s.name: to_host(s.name, s.param)
        for s in layout.slots
        if s.expert_first < 0 and layout.dense_owner[s.name]
    }
    if dense:
        files.append((f"model/dense-{name}.pt", dense))
    if layout.expert_writer:
        experts: dict[int, dict[str, torch.Tensor]] = {}
        for s in layout.slots:
            if s.expert_first >= 0:
                for g, t in expert_split(s, s.param.detach()).items():
                    experts.setdefault(g, {})[expert_key(s.name, g)] = to_host(expert_key(s.name, g), t)
        files.extend((f"model/expert-{g:05d}.pt", tensors) for g, tensors in sorted(experts.items()))
    frags = local_fragments(layout.slots, optimizer, layout.owner, to_host)
    if frags:
        blob = {"adam_step": adam_step(optimizer), "fragments": [f.__dict__ for f in frags]}
        files.append((f"optim/{name}.pt", blob))
        index = [{"name": f.name, "start": f.start, "numel": f.numel} for f in frags]
        files.append((f"optim/{name}.json", json.dumps(index).encode()))
    files.append((f"extra/{name}.pt", {"rng": rng_state(), "data": copy.deepcopy(rank_data)}))
    if layout.rank == 0:
        body = {"format": FORMAT, "world_size": layout.world_size, **copy.deepcopy(run_state)}
        files.append(("extra/state.json", json.dumps(body, indent=1, sort_keys=True).encode()))
    return files


def serialize(content: Any) -> bytes:
    """One file's bytes: JSON as is, anything else through `torch.save` into memory."""
    if isinstance(content, bytes):
        return content
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return buffer.getvalue()  # the buffer's own bytes object, not a copy (CPython shares it)


def spill(content: Any, path: str) -> None:
    """One file written to `path` (on a scratch volume) instead of memory."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if isinstance(content, bytes):
        with open(path, "wb") as fh:
            fh.write(content)
    else:
        torch.save(content, path)
