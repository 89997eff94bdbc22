"""What a training process is told: about its job (`JobContext`) and about itself (`Worker`).

The driver (`train.py`) reads and checks the run config once, then hands every Ray Train worker a
`JobContext` in `train_loop_config={"job": context}`: typed objects that Ray pickles as they are,
so no worker parses the config again (`RunConfig` is a plain dataclass). The Ray adapter
(`ray_worker`) adds what only the worker knows (its rank, device, how to report) and makes a
`Worker`; everything below the adapter takes a `Worker` and knows nothing of Ray, so tests and
benchmarks drive the loop in plain gloo processes with a `Worker` of their own.

Torch-free: the driver imports it without the training stack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sphinxx.schema.run import RunConfig


@dataclass(frozen=True)
class JobContext:
    """One attempt of a run, as the driver resolved it; identical for every worker."""

    config: RunConfig  # read and checked once, by the driver (train.read_config)
    attempt: int = 0  # operator attempt (SPHINXX_ATTEMPT), recorded in manifests and tags
    mlflow_run_id: str | None = None  # resolved by the driver; None: rank 0 creates it lazily
    code_version: str = "unknown"
    # Planned stops of the run before this segment (the driver's count, `jobs/segments.py`): every
    # commit records them, so the next attempt and the operator read them back from the manifest.
    preemptions: int = 0
    resizes: int = 0
    resized_from: int = 0  # the world size a resize ended the previous segment at (0: it did not)


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
    preemptions: int = 0  # planned stops of the run before this segment (JobContext)
    resizes: int = 0
    resized_from: int = 0  # JobContext.resized_from
    # What is free in the cluster now (rank 0 under Ray: ray.available_resources); None: never grow.
    free_resources: Callable[[], Mapping[str, float]] | None = None
