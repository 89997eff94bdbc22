"""The per-worker training loop: what every Ray Train worker runs (`train_loop_per_worker`).

One worker = one data-parallel rank. It builds SPHINX-X from the flavor, applies parallelism
from outside (DeepSpeed ZeRO from `parallel.zero_stage`; expert parallelism for MoE flavors),
restores the latest committed checkpoint (at any world size), then trains global batches:

    for every optimizer step s (global batch s of the elastic sampler):
        N = target tokens of the whole global batch (one all-reduce)
        for each of this rank's `accum` micro-batches:
            backward( ce_sum * W / N  +  aux / accum )       # DeepSpeed then averages over W
        optimizer step with lr(s), clipped by train.grad_clip

so the gradient is d/dθ [ sum of CE over the global batch / N + mean aux ] whatever the world
size W and accumulation are (sphinx_x_model.md 8): an elastic resize changes nothing but speed.

Every `train.checkpoint_interval` steps and at the end all ranks save through
`checkpointing.Checkpointer` (commit protocol of `sphinxx.storage`); rank 0 then reports a
pointer checkpoint to Ray Train (orchestration.md 3.3), tracks to MLflow and prints progress.
The loop itself knows nothing of Ray: `train_loop_per_worker` adapts Ray's context to `Worker`,
so tests can drive `train()` in plain gloo processes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from sphinxx.jobs.progress import ProgressPrinter, Throughput, peak_flops_per_device
from sphinxx.jobs.schedule import Schedule
from sphinxx.jobs.schema.run import RunConfig, flatten, from_dict, to_yaml
from sphinxx.jobs.tracking import MLflowTracker, NullTracker, tracking_uri

log = logging.getLogger("sphinxx.loop")


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


@dataclass
class StepStats:
    """Global (all-reduced) numbers of one optimizer step."""

    grad_norm: float
    loss: float
    ce: float
    aux: float
    targets: int
    tokens: int
    samples: int
    image_tokens: int
    views: int
    skipped_views: int


# ---------------------------------------------------------------------------- building


def model_args(cfg: RunConfig):
    """SphinxArgs of the run: the decoder admission checked (`run_decoder_args`) + towers + layout."""
    from sphinxx.jobs.schema.run import run_decoder_args
    from sphinxx.model.flavors import get_sphinx_args

    return get_sphinx_args(cfg.model.flavor, use_skip_token=cfg.model.use_skip_token, llm=run_decoder_args(cfg))


def build_model(cfg: RunConfig, worker: Worker):
    """SphinxX on the worker's device, weights random (seeded) or loaded from the configured URIs."""
    from sphinxx.model.llm import apply_activation_checkpointing
    from sphinxx.model.sphinx import SphinxX

    args = model_args(cfg)
    ep_size = args.llm.ep_size
    # Same seed on every rank: replicated params start equal without a broadcast. (Expert
    # slices differ per EP rank by construction; real runs load converted weights.)
    torch.manual_seed(cfg.train.seed)
    model = SphinxX(args)
    if cfg.model.llm_weights:
        from sphinxx.model.convert import load_converted

        load_converted(cfg.model.llm_weights, model.llm, ep_rank=worker.rank % ep_size)
    if cfg.model.convnext_weights or cfg.model.dinov2_weights:
        model.load_vision(cfg.model.convnext_weights, cfg.model.dinov2_weights)
    model.vision.requires_grad_(False)  # frozen towers (section 9)
    if cfg.model.activation_checkpointing or args.llm.activation_checkpointing:
        apply_activation_checkpointing(model.llm)
    return model.to(worker.device), ep_size


def build_engine(model: torch.nn.Module, cfg: RunConfig, worker: Worker, accum: int):
    """DeepSpeed engine around `model`: torch AdamW (recipe betas/eps) on `jobs.parallelize`'s
    param groups and config; for MoE flavors its EP groups and engine shim (moe.md 7)."""
    import deepspeed

    from sphinxx.jobs import parallelize

    bf16 = cfg.train.precision == "bf16" and worker.device != "cpu" and torch.cuda.is_bf16_supported()
    if cfg.train.precision == "bf16" and not bf16:
        log.warning("bf16 requested but not supported on %s; training in fp32", worker.device)
    deepspeed.init_distributed(dist_backend="nccl" if worker.device.startswith("cuda") else "gloo")
    ep_size = _ep_size(model)
    ep = parallelize.parallelize(model, ep_size=ep_size, zero_stage=cfg.parallel.zero_stage)
    groups = parallelize.optimizer_param_groups(model, cfg.train.weight_decay)
    optimizer = torch.optim.AdamW(
        groups, lr=cfg.train.lr, betas=tuple(cfg.train.betas), eps=cfg.train.eps, foreach=False
    )
    config = parallelize.deepspeed_config(
        zero_stage=cfg.parallel.zero_stage,
        micro_batch=cfg.train.micro_batch,
        grad_accum_steps=accum,
        precision="bf16" if bf16 else "fp32",
        grad_clip=cfg.train.grad_clip,
        ep_size=ep_size,
    )
    engine = parallelize.initialize(model, optimizer, config, ep)
    return engine, engine.optimizer


def _ep_size(model: torch.nn.Module) -> int:
    return max((getattr(m.args, "ep_size", 1) for m in model.modules() if hasattr(m, "experts")), default=1)


# ---------------------------------------------------------------------------- the loop


def train(cfg: RunConfig, worker: Worker) -> dict[str, Any]:
    """Train until the step budget is done; returns the final metrics (rank 0's are complete)."""
    from sphinxx.jobs.checkpointing import Checkpointer, RunState
    from sphinxx.jobs.data.loader import build_data
    from sphinxx.storage import CheckpointStore, RetentionPolicy, StorageOptions

    torch.set_num_threads(max(1, cfg.parallel.cpus_per_worker))
    data = build_data(cfg, worker.rank, worker.world_size)
    total = data.stop_step
    model, _ = build_model(cfg, worker)
    _check_vocab(data, model)
    engine, optimizer = build_engine(model, cfg, worker, data.accum_steps)
    schedule = Schedule(total, cfg.train.lr, cfg.train.min_lr, cfg.train.warmup, cfg.train.schedule)
    store = CheckpointStore(
        cfg.storage.uri,
        cfg.run_id,
        attempt=worker.attempt,
        options=StorageOptions(endpoint_url=cfg.storage.endpoint_url),
    )
    if worker.rank == 0:
        store.clean_partial(grace_s=0)  # folders of a dead attempt (orchestration 6.5); none is live
    policy = RetentionPolicy(
        keep_last=cfg.storage.keep_last,
        keep_best=cfg.storage.keep_best,
        metric=cfg.storage.best_metric,
        milestone_every=cfg.storage.milestone_every,
    )
    skip = ("vision.convnext.",) if cfg.model.convnext_weights else ()
    skip += ("vision.dinov2.",) if cfg.model.dinov2_weights else ()
    ckpt = Checkpointer(
        store,
        model,
        optimizer,
        worker.rank,
        worker.world_size,
        seed=cfg.train.seed,
        skip_prefixes=skip,
        metadata={
            "zero_stage": cfg.parallel.zero_stage,
            "ep_size": _ep_size(model),
            "dp_size": worker.world_size,
            "code_version": worker.code_version,
            "extra": {"attempt": worker.attempt},
        },
        policy=policy,
    )
    restored = ckpt.restore()
    state = RunState(0, {}, schedule.state_dict())
    if restored is not None:
        state = restored.state
        data.load_state_dict({"sampler": state.sampler, "stats": restored.rank_data or {}})
        engine.global_steps = state.step
        if worker.rank == 0:
            print(f"[sphinxx] resumed from {restored.info.uri} at step {state.step}/{total}", flush=True)
    tracker = _open_tracker(cfg, worker, store, model, state.step, total)
    flops = _flops_model(cfg, model, data)
    meter = Throughput()
    meter.mark(state.step, 0, 0)
    printer = ProgressPrinter(total, cfg.train.log_interval)
    trace = SampleTrace.from_env(worker)
    metrics: dict[str, Any] = {"step": state.step}
    for group in data.iter_steps():
        step = group[0].step
        lr = schedule(step)
        for pg in optimizer.param_groups:
            pg["lr"] = lr
        stats = _train_step(engine, model, group, worker)
        trace.record(step, group)
        state.step = step + 1
        state.tokens_seen += stats.tokens
        state.samples_seen += stats.samples
        meter.mark(state.step, stats.tokens, stats.samples)
        tok_s, smp_s, sec_step = meter.rates()
        metrics = {
            "step": state.step,
            "loss": stats.loss,
            "ce_loss": stats.ce,
            "aux_loss": stats.aux,
            "lr": lr,
            "grad_norm": stats.grad_norm,
            "tokens_per_s": tok_s,
            "samples_per_s": smp_s,
            "mfu": flops.mfu(stats, sec_step, worker.world_size) if sec_step else 0.0,
            "visual_tokens": stats.image_tokens,
            "skip_ratio": stats.skipped_views / max(1, stats.views + stats.skipped_views),
            "tokens_seen": state.tokens_seen,
            **_expert_load(model),
        }
        if state.step % cfg.train.log_interval == 0 or state.step == total:
            tracker.log_metrics({k: v for k, v in metrics.items() if k != "step"}, state.step)
        if worker.rank == 0:
            printer.maybe_print(state.step, metrics, sec_step)
        if state.step % cfg.train.checkpoint_interval == 0 or state.step == total:
            state.sampler = data.state_dict()["sampler"]
            info = ckpt.save(
                state, data.state_dict()["stats"], {"loss": stats.loss}, final=state.step == total
            )
            _after_checkpoint(info, metrics, worker, tracker, state.step)
    if state.step > 0:
        tracker.log_metrics(data.stats.metrics(), state.step)
    tracker.close(timeout=120)
    return {**metrics, "num_params": trainable_params(model)}


def _train_step(engine, model, group, worker: Worker) -> StepStats:
    """One global batch on this rank: accum micro-batches, one optimizer step."""
    accum = len(group)
    local = torch.tensor([float(sum(mb.num_targets for mb in group))])
    num_targets = max(_all_reduce(local)[0].item(), 1.0)  # the GLOBAL normaliser
    scale = worker.world_size / num_targets
    ce_sum = aux_sum = 0.0
    counts = torch.zeros(6, dtype=torch.float64)
    grad_norm = None
    for i, mb in enumerate(group):
        batch = mb.batch.to(worker.device)
        out = engine(batch)
        loss = out.ce_sum * scale + out.aux_loss / accum
        engine.backward(loss, scale_wrt_gas=False)
        if i == accum - 1 and not _engine_tracks_grad_norm(engine):
            grad_norm = _grad_norm_before_step(model)
        engine.step()
        ce_sum += out.ce_sum.detach().item()
        aux_sum += out.aux_loss.detach().item()
        slots = batch.image_slots
        counts += torch.tensor(
            [
                float(sum(batch.sequence_lengths())) if mb.samples else 0.0,
                float(mb.num_samples),
                float(mb.num_image_tokens),
                float((slots == 1).sum()),
                float((slots == 0).sum()),
                0.0,
            ],
            dtype=torch.float64,
        )
    totals = _all_reduce(torch.tensor([ce_sum, aux_sum / accum], dtype=torch.float64))
    counts = _all_reduce(counts)
    ce = totals[0].item() / num_targets
    aux = totals[1].item() / worker.world_size
    return StepStats(
        grad_norm=grad_norm if grad_norm is not None else _grad_norm(engine),
        loss=ce + aux,
        ce=ce,
        aux=aux,
        targets=int(num_targets),
        tokens=int(counts[0]),
        samples=int(counts[1]),
        image_tokens=int(counts[2]),
        views=int(counts[3]),
        skipped_views=int(counts[4]),
    )


def trainable_params(model: torch.nn.Module) -> int:
    """Trainable parameters of the whole model (every expert counted, not this rank's slice)."""
    from math import prod

    from sphinxx.jobs.checkpointing import param_slots

    return sum(prod(s.global_shape) for s in param_slots(model) if s.param.requires_grad)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def _grad_norm(engine) -> float:
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else 0.0


def _engine_tracks_grad_norm(engine) -> bool:
    """ZeRO-1/2 and the bf16 optimizer record the clipped norm; plain fp32 ZeRO-0 discards it."""
    return bool(engine.zero_optimization() or engine.bfloat16_enabled())


def _grad_norm_before_step(model: torch.nn.Module) -> float:
    """Global L2 norm of the averaged gradients (after the last backward's all-reduce).

    Dense grads are identical on every rank; an expert slice's grad lives on its EP rank and is
    replicated over the W / EP expert-data-parallel ranks, so the expert part is summed over the
    world and divided by that replication.
    """
    dense = torch.zeros((), dtype=torch.float64)
    expert = torch.zeros((), dtype=torch.float64)
    for p in model.parameters():
        if p.grad is None:
            continue
        sq = p.grad.detach().double().pow(2).sum().cpu()
        if getattr(p, "allreduce", True) is False:
            expert += sq
        else:
            dense += sq
    ep = _ep_size(model)
    if ep > 1 and dist.is_initialized():
        dist.all_reduce(expert)
        expert /= dist.get_world_size() // ep
    return float((dense + expert).sqrt())


def _expert_load(model: torch.nn.Module) -> dict[str, float]:
    """MoE: each expert's share of routed tokens (mean over layers) and max/mean imbalance."""
    loads = [
        m.tokens_per_expert for m in model.modules() if getattr(m, "tokens_per_expert", None) is not None
    ]
    if not loads:
        return {}
    stacked = torch.stack([load.float().cpu() for load in loads])  # [layers, E]
    shares = stacked / stacked.sum(dim=1, keepdim=True).clamp_min(1.0)
    out = {f"moe/expert{e}_share": float(v) for e, v in enumerate(shares.mean(0))}
    out["moe/imbalance"] = float((stacked.max(1).values / stacked.mean(1).clamp_min(1e-9)).mean())
    return out


def _check_vocab(data, model) -> None:
    size = len(data.encoder.tokenizer)
    if size > model.args.llm.vocab_size:
        raise ValueError(
            f"the tokenizer has {size} ids but the model's vocabulary is {model.args.llm.vocab_size}; "
            "use the flavor's tokenizer or set model.overrides.vocab_size"
        )


@dataclass
class _Flops:
    per_token: float  # LLM training FLOPs per position
    per_image_token: float  # projector training FLOPs per image position
    per_view: float  # frozen towers' forward FLOPs per encoded view
    peak: float  # per device

    def mfu(self, stats: StepStats, sec_per_step: float, world_size: int) -> float:
        achieved = (
            self.per_token * stats.tokens
            + self.per_image_token * stats.image_tokens
            + self.per_view * stats.views
        ) / sec_per_step
        return achieved / (self.peak * world_size)


def _flops_model(cfg: RunConfig, model, data) -> _Flops:
    from sphinxx.model.info import flops, parameter_counts
    from sphinxx.model.sphinx import SphinxX

    with torch.device("meta"):
        meta = SphinxX(model.args)
    counts = parameter_counts(meta)
    cost = flops(meta, counts, cfg.data.seq_len)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return _Flops(
        cost["llm_train_per_token"],
        cost["projector_train_per_image_token"],
        cost["vision_forward_per_view"],
        peak_flops_per_device(device, torch.get_num_threads()),
    )


class SampleTrace:
    """Optional audit trail: which stream positions each rank trained on at each step.

    Set SPHINXX_SAMPLE_TRACE to a directory and every rank appends one JSON line per optimizer
    step ({step, rank, world_size, attempt, pid, positions}) to its own file, flushed at once, so
    a crash loses nothing. Answers "did a resume repeat or skip samples?" after the fact.
    """

    def __init__(self, path: str | None, worker: Worker):
        self.worker = worker
        self.file = None
        if path:
            os.makedirs(path, exist_ok=True)
            name = f"rank{worker.rank}-attempt{worker.attempt}-pid{os.getpid()}.jsonl"
            self.file = open(os.path.join(path, name), "a")  # noqa: SIM115 - lives as long as the loop

    @classmethod
    def from_env(cls, worker: Worker) -> SampleTrace:
        return cls(os.environ.get("SPHINXX_SAMPLE_TRACE"), worker)

    def record(self, step: int, group) -> None:
        if self.file is None:
            return
        line = {
            "step": step,
            "rank": self.worker.rank,
            "world_size": self.worker.world_size,
            "attempt": self.worker.attempt,
            "pid": os.getpid(),
            "positions": [p for mb in group for p in mb.positions],
        }
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()


# ---------------------------------------------------------------------------- tracking


def _open_tracker(cfg: RunConfig, worker: Worker, store, model, restored_step: int, total: int):
    if worker.rank != 0:
        return NullTracker()
    uri = tracking_uri(cfg.tracking.uri)

    def record(run_id: str) -> None:
        store.write_run_manifest(code_version=worker.code_version, extra={"mlflow_run_id": run_id})

    tracker = MLflowTracker(
        uri, worker.mlflow_run_id, cfg.tracking.experiment, cfg.run_id, on_created=record, retry_max_s=10.0
    )
    tracker.skip_through(restored_step)
    tracker.log_params(flatten(cfg))
    tracker.set_tags(
        {
            "sphinxx.flavor": cfg.model.flavor,
            "sphinxx.data_fraction": cfg.data.fraction,
            "sphinxx.world_size": worker.world_size,
            "sphinxx.attempt": worker.attempt,
            "sphinxx.code_version": worker.code_version,
            "sphinxx.total_steps": total,
            "sphinxx.trainable_params": trainable_params(model),
        }
    )
    tracker.log_text(to_yaml(cfg), "config.yaml")
    return tracker


def _after_checkpoint(info, metrics: dict[str, Any], worker: Worker, tracker, step: int) -> None:
    """Tell MLflow and Ray about a commit (rank 0 has `info`; every rank must call report)."""
    pointer_dir = None
    if info is not None:
        tracker.set_tags({"checkpoint_uri": info.uri, "checkpoint_step": step})
        tracker.log_metrics({"checkpoint_step": step}, step)
        pointer_dir = tempfile.mkdtemp(prefix="sphinxx-pointer-")
        with open(os.path.join(pointer_dir, "pointer.json"), "w") as fh:
            json.dump({"step": step, "uri": info.uri}, fh)
        metrics = {**metrics, "checkpoint_uri": info.uri}
    worker.report(dict(metrics), pointer_dir)


# ---------------------------------------------------------------------------- Ray Train entry


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train V2 entry: `config` = {"run": config dict, "attempt", "mlflow_run_id", "code_version"}."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    # Ray Train routes print() and the root logger to the driver already; a handler of our own
    # would print every line twice.
    logging.getLogger("sphinxx").setLevel(logging.INFO)
    cfg = from_dict(config["run"])
    device = ray.train.torch.get_device() if cfg.parallel.gpus_per_worker > 0 else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    worker = Worker(
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        local_rank=ctx.get_local_rank(),
        attempt=int(config.get("attempt", 0)),
        mlflow_run_id=config.get("mlflow_run_id"),
        code_version=config.get("code_version", "unknown"),
        device=str(device),
        report=_ray_report,
    )
    return train(cfg, worker)


def _ray_report(metrics: dict[str, Any], pointer_dir: str | None) -> None:
    import ray.train

    clean = {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
    if pointer_dir is None:
        ray.train.report(clean)
        return
    try:
        checkpoint = ray.train.Checkpoint.from_directory(pointer_dir)
        ray.train.report(clean, checkpoint=checkpoint, checkpoint_dir_name=f"pointer-{metrics['step']:09d}")
    finally:
        import shutil

        shutil.rmtree(pointer_dir, ignore_errors=True)
