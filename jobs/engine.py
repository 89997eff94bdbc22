"""The DeepSpeed engine around a built model, as the run config asks for it.

`build_engine` turns the run's `train` and `parallel` sections into `jobs.parallelize`'s calls:
the distributed backend (NCCL on CUDA, gloo on CPU), expert-parallel groups for MoE flavors
(docs/moe.md, "DeepSpeed and ZeRO with experts"), torch AdamW with the recipe's betas/eps on
`parallelize.optimizer_param_groups`, and the DeepSpeed config (ZeRO stage, micro-batch, accumulation,
precision, clipping).

`jobs.parallelize` stays its own module: it is the one place that knows DeepSpeed's MoE
bookkeeping and its version-checked shim, takes plain keyword arguments (no run config), and is
used as such by benchmarks and tests/moe; this module is the run-config side of it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from sphinxx.jobs import parallelize
from sphinxx.jobs.context import Worker
from sphinxx.schema.run import ParallelConfig, TrainConfig

log = logging.getLogger("sphinxx.engine")


def build_engine(
    model: torch.nn.Module, train: TrainConfig, parallel: ParallelConfig, worker: Worker, accum: int
) -> tuple[Any, Any]:
    """DeepSpeed engine around `model`: torch AdamW (recipe betas/eps) on `jobs.parallelize`'s
    param groups and config; for MoE flavors its EP groups and engine shim
    (docs/moe.md, "DeepSpeed and ZeRO with experts")."""
    bf16 = uses_bf16(train.precision, worker.device)
    if train.precision == "bf16" and not bf16:
        log.warning("bf16 requested but not supported on %s; training in fp32", worker.device)
    parallelize.init_distributed("nccl" if worker.device.startswith("cuda") else "gloo")
    ep_size = expert_parallel_size(model)
    ep = parallelize.parallelize(model, ep_size=ep_size, zero_stage=parallel.zero_stage)
    groups = parallelize.optimizer_param_groups(model, train.weight_decay)
    optimizer = torch.optim.AdamW(
        groups, lr=train.lr, betas=(train.betas[0], train.betas[1]), eps=train.eps, foreach=False
    )
    config = parallelize.deepspeed_config(
        zero_stage=parallel.zero_stage,
        micro_batch=train.micro_batch,
        grad_accum_steps=accum,
        precision="bf16" if bf16 else "fp32",
        grad_clip=train.grad_clip,
        ep_size=ep_size,
    )
    engine = parallelize.initialize(model, optimizer, config, ep)
    return engine, engine.optimizer


def uses_bf16(precision: str, device: str) -> bool:
    """Whether the engine trains in bf16 (fp32 master weights in the optimizer): asked for
    (`train.precision`), and the worker's device supports it. On CPU the run trains in fp32."""
    return precision == "bf16" and device != "cpu" and torch.cuda.is_bf16_supported()


def expert_parallel_size(model: torch.nn.Module) -> int:
    """The EP size the model's MoE layers were built for (1 for dense models)."""
    return max((getattr(m.args, "ep_size", 1) for m in model.modules() if hasattr(m, "experts")), default=1)
