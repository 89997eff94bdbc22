"""RNG state and the collectives of the checkpoint protocol.

A resumed rank must draw the same random numbers as it would have without the interruption, so
each rank saves its Python, NumPy, torch (and CUDA) generator states; a rank that did not exist
before (the world grew) reseeds deterministically from (seed, step, rank).

The collectives are the three the protocol needs: a barrier around the commit, gathering the
writers' upload records to rank 0, and broadcasting rank 0's choice of step. Each is a no-op
outside torch.distributed, so a single process (a test, a notebook) saves and restores too.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


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


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if distributed():
        dist.barrier()


def all_gather(obj: Any) -> list[Any]:
    if not distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
