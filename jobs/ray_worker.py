"""The Ray Train adapter: what each Ray Train V2 worker runs (`train_loop_per_worker`).

The only module of the training loop that imports Ray. It turns Ray's worker context (ranks,
device) and the driver's `JobContext` (the run config, parsed once by the driver, and the
attempt's identity) into a `Worker`, calls `loop.train`, and reports each committed checkpoint
to Ray Train as a *pointer*: a tiny directory holding {step, uri, commit_id}, named uniquely per
commit (`loop.pointer_name`; docs/storage.md, "Pointer checkpoints for Ray Train"). The
checkpoint itself lives in our store; Ray keeps only the pointer, so its own storage stays small.

A planned stop (`preemption.StopRequested`: a preemption or a resize, committed at its step) is
*returned*, not raised: an exception would be a `WorkerGroupError` to Ray Train's failure policy,
charged to `max_failures`. The driver reads the outcome and starts the next segment
(`jobs/segments.py`). Rank 0 gets `ray.available_resources` as its probe for room to grow
(`jobs/resize.py`).
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import ray.train
import ray.train.torch
import torch

from sphinxx.jobs.context import JobContext, Worker
from sphinxx.jobs.loop import train
from sphinxx.jobs.preemption import StopRequested


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train V2 entry: `config` = {"job": JobContext} (train_loop_config, from the driver)."""
    job: JobContext = config["job"]
    ctx = ray.train.get_context()
    # Ray Train routes print() and the root logger to the driver already; a handler of our own
    # would print every line twice.
    logging.getLogger("sphinxx").setLevel(logging.INFO)
    cfg = job.config
    device = ray.train.torch.get_device() if cfg.parallel.gpus_per_worker > 0 else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    worker = Worker(
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        local_rank=ctx.get_local_rank(),
        attempt=job.attempt,
        mlflow_run_id=job.mlflow_run_id,
        code_version=job.code_version,
        device=str(device),
        report=_ray_report,
        preemptions=job.preemptions,
        resizes=job.resizes,
        resized_from=job.resized_from,
        free_resources=ray.available_resources,
    )
    try:
        return train(cfg, worker)
    except StopRequested as stop:  # committed at stop.step: an outcome for the driver, not a failure
        return {**stop.outcome(), "world_size": worker.world_size}


def _ray_report(metrics: dict[str, Any], pointer_dir: str | None) -> None:
    """Report a step's metrics to Ray Train, with the pointer checkpoint after a commit."""
    clean = {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
    if pointer_dir is None:
        ray.train.report(clean)
        return
    try:
        checkpoint = ray.train.Checkpoint.from_directory(pointer_dir)
        # The folder is named by loop.pointer_name: unique per commit, so Ray never holds two
        # entries for one folder (and never deletes a folder twice) across retries and rollbacks.
        ray.train.report(clean, checkpoint=checkpoint, checkpoint_dir_name=os.path.basename(pointer_dir))
    finally:
        shutil.rmtree(os.path.dirname(pointer_dir), ignore_errors=True)
