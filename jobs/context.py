"""What a training process knows about itself (`Worker`).

The Ray adapter (`ray_worker`) makes a `Worker` from Ray's context; everything below the adapter
(build, engine, loop, audit) takes a `Worker` and knows nothing of Ray, so tests and benchmarks
drive the loop in plain gloo processes with a `Worker` of their own. Its own module because those
lower modules need it too: in `loop` it would make an import cycle.

Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Worker:
    """What a training process knows about itself (from Ray Train, or set up by a test)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    attempt: int = 0  # operator attempt (SPHINXX_ATTEMPT), recorded in manifests and tags
    mlflow_run_id: str | None = None  # resolved by the driver; None: rank 0 creates it lazily
    code_version: str = "unknown"
    device: str = "cpu"
    # Called on every rank after each committed checkpoint: (metrics, pointer dir or None).
    report: Callable[[dict[str, Any], str | None], None] = field(default=lambda metrics, pointer: None)
