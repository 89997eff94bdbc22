"""The per-worker training loop: what every worker runs once its model and engine are built.

One worker = one data-parallel rank. It builds SPHINX-X from the flavor (`build`), applies
parallelism from outside (`engine`: DeepSpeed ZeRO from `parallel.zero_stage`; expert parallelism
for MoE flavors), restores the latest committed checkpoint (at any world size), then trains
global batches:

    for every optimizer step s (global batch s of the elastic sampler):
        N = target tokens of the whole global batch (one all-reduce)
        for each of this rank's `accum` micro-batches:
            backward( ce_sum * W / N  +  aux / accum )       # DeepSpeed then averages over W
        optimizer step with lr(s), clipped by train.grad_clip

so the gradient is d/dθ [ sum of CE over the global batch / N + mean aux ] whatever the world
size W and accumulation are (docs/model.md, "Loss normalisation over the global batch"): an elastic resize changes nothing but speed.

A worker asked to stop (SIGTERM, the pod's preStop hook: `preemption.StopSignal`) finishes its
step; all ranks agree at the end of every step (one all-reduce of a flag), save that step, and
raise `preemption.Preempted`, so the retry or the resized group resumes there, losing no step.

Every `train.checkpoint_interval` steps and at the end all ranks save through
`checkpoint.Checkpointer` (commit protocol of `sphinxx.storage`), committing the loss and the
scaling-law inputs (`metrics.checkpoint_metrics`); rank 0 then reports a pointer checkpoint to
Ray Train (docs/storage.md, "Pointer checkpoints for Ray Train"), tracks to MLflow (unless
`tracking.enabled` is false) and prints progress. The loop itself knows nothing of Ray:
`ray_worker.train_loop_per_worker` adapts Ray's context to `Worker`, so tests and benchmarks
drive `train()` in plain processes; a benchmark may also pass a `timing.PhaseTimer` to time the
phases of every step (`jobs.timing`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from sphinxx.jobs.audit import SampleTrace
from sphinxx.jobs.build import build_model, check_vocab
from sphinxx.jobs.context import Worker
from sphinxx.jobs.engine import build_engine, expert_parallel_size
from sphinxx.jobs.evaluation import due
from sphinxx.jobs.metrics import (
    StepStats,
    all_reduce_host,
    checkpoint_metrics,
    engine_tracks_grad_norm,
    expert_load,
    flop_model,
    grad_norm,
    grad_norm_before_step,
    model_sizes,
)
from sphinxx.jobs.preemption import Preempted, StopSignal
from sphinxx.jobs.progress import ProgressPrinter, Throughput
from sphinxx.jobs.schedule import Schedule
from sphinxx.jobs.timing import NULL_TIMER
from sphinxx.jobs.tracking import MLflowTracker, NullTracker, tracking_uri
from sphinxx.schema.run import RunConfig, flatten, to_yaml


def train(cfg: RunConfig, worker: Worker, timer: Any = None) -> dict[str, Any]:
    """Train until the step budget is done; returns the final metrics (rank 0's are complete).

    The result carries the model's sizes as the checkpoints do: `num_params` (N of the scaling
    law) and `num_params_total` (every trainable parameter), and `mfu_peak_source`, where the
    peak behind `mfu` comes from. `timer` (a `timing.PhaseTimer`, benchmarks only) times each
    step's phases; None times nothing.
    """
    from sphinxx.jobs.checkpoint import RunState
    from sphinxx.jobs.data.loader import build_data

    torch.set_num_threads(max(1, cfg.parallel.cpus_per_worker))
    data = build_data(cfg, worker.rank, worker.world_size)
    total = data.stop_step
    staged: list[Any] = []
    model, _ = build_model(cfg, worker, staged)
    check_vocab(data, model)
    # Sized before the engine: under ZeRO-3 DeepSpeed empties the parameters it partitions.
    sizes = model_sizes(model)
    engine, optimizer = build_engine(model, cfg, worker, data.accum_steps)
    schedule = Schedule(total, cfg.train.lr, cfg.train.min_lr, cfg.train.warmup, cfg.train.schedule)
    store, ckpt = _open_checkpointer(cfg, worker, model, optimizer)
    restored = ckpt.restore()
    state = RunState(0, {}, schedule.state_dict())
    if restored is not None:
        state = restored.state
        data.load_state_dict({"sampler": state.sampler, "stats": restored.rank_data or {}})
        engine.global_steps = state.step
        if worker.rank == 0:
            print(f"[sphinxx] resumed from {restored.info.uri} at step {state.step}/{total}", flush=True)
    flops = flop_model(model, worker.device)
    tracker = _open_tracker(
        cfg, worker, store, sizes["num_params_total"], state.step, total, flops.peak.source
    )
    estimate = _log_estimate(cfg, worker, total, staged, tracker) if worker.rank == 0 else {}
    evaluator = _heldout_evaluator(cfg, worker, data)
    if (
        staged
    ):  # what this attempt's weights cost to stage on rank 0's node (docs/training.md, "The model of a run")
        tracker.set_tags(  # tags, not metrics: a resumed attempt skips metrics at steps it already logged
            {
                "sphinxx.stage_bytes_downloaded": sum(r.bytes_downloaded for r in staged),
                "sphinxx.stage_bytes_total": sum(r.bytes_total for r in staged),
                "sphinxx.stage_seconds": round(sum(r.seconds for r in staged), 3),
            }
        )
    timer = timer or NULL_TIMER
    timer.start(model, flops)
    meter = Throughput()
    meter.mark(state.step, 0, 0)
    printer = ProgressPrinter(total, cfg.train.log_interval, mfu_estimate=flops.peak.estimate)
    trace = SampleTrace.from_env(worker)
    stop = StopSignal.from_env(cfg.train.termination_grace_seconds)
    metrics: dict[str, Any] = {"step": state.step}
    for group in _timed(data.iter_steps(), timer):
        step = group[0].step
        lr = schedule(step)
        for pg in optimizer.param_groups:
            pg["lr"] = lr
        stats = _train_step(engine, model, group, worker, timer)
        trace.record(step, group)
        state.step = step + 1
        state.tokens_seen += stats.tokens
        state.samples_seen += stats.samples
        meter.mark(state.step, stats.tokens, stats.samples, flops=flops.step_flops(stats))
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
            "mfu": flops.mfu_of_rate(meter.flops_per_s(), worker.world_size),
            "visual_tokens": stats.image_tokens,
            "skip_ratio": stats.skipped_views / max(1, stats.views + stats.skipped_views),
            "tokens_seen": state.tokens_seen,
            **expert_load(model),
        }
        if state.step % cfg.train.log_interval == 0 or state.step == total:
            tracker.log_metrics({k: v for k, v in metrics.items() if k != "step"}, state.step)
        if worker.rank == 0:
            printer.maybe_print(state.step, metrics, sec_step)
        if evaluator is not None and due(
            state.step, total, cfg.train.eval_interval, state.extra.get("heldout", {}).get("step")
        ):
            heldout = evaluator.run(engine.module, worker.device).metrics()
            state.extra["heldout"] = {
                "step": state.step,
                "tokens_seen": state.tokens_seen,
                "metrics": heldout,
            }
            _log_heldout(tracker, worker, heldout, state)
        stopping = stop.agreed(_max_across_ranks)
        if state.step % cfg.train.checkpoint_interval == 0 or state.step == total or stopping:
            state.sampler = data.state_dict()["sampler"]
            # + the cost estimate and the measured MFU, which the operator shows in status.metrics
            committed = {**checkpoint_metrics(stats.loss, state.tokens_seen, sizes), **estimate, "mfu": metrics["mfu"],
                         **state.extra.get("heldout", {}).get("metrics", {})}  # fmt: skip
            try:
                info = ckpt.save(state, data.state_dict()["stats"], committed, final=state.step == total)
            finally:
                if stopping:
                    stop.done()
            _after_checkpoint(info, metrics, worker, tracker, state.step)
        if stopping and state.step < total:
            if worker.rank == 0:
                print(f"[sphinxx] stopped on request ({stop.why}) at step {state.step}/{total}", flush=True)
            tracker.close(timeout=min(30.0, stop.remaining()))
            raise Preempted(state.step, stop.why or "stop requested")
        timer.step_done(state.step, stats, metrics)
    if state.step > 0:
        tracker.log_metrics(data.stats.metrics(), state.step)
    tracker.close(timeout=120)
    return {**metrics, **sizes, "mfu_peak_source": flops.peak.source}


def _timed(steps: Iterable, timer) -> Iterator:
    """`steps`, with the wait for each next global batch timed as the `data` phase."""
    it = iter(steps)
    while True:
        with timer.phase("data"):
            group = next(it, None)
        if group is None:
            return
        yield group


def _open_checkpointer(cfg: RunConfig, worker: Worker, model, optimizer):
    """The run's store (partial folders of a dead attempt cleaned) and this rank's Checkpointer."""
    from sphinxx.jobs.checkpoint import Checkpointer
    from sphinxx.storage import CheckpointStore, RetentionPolicy, StorageOptions

    store = CheckpointStore(
        cfg.storage.uri,
        cfg.run_id,
        attempt=worker.attempt,
        options=StorageOptions(endpoint_url=cfg.storage.endpoint_url),
    )
    if worker.rank == 0:
        store.clean_partial(
            grace_s=0
        )  # folders of a dead attempt (docs/storage.md, "Retention and partial-folder cleanup"); none is live
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
            "ep_size": expert_parallel_size(model),
            "dp_size": worker.world_size,
            "code_version": worker.code_version,
            "extra": {"attempt": worker.attempt},
        },
        policy=policy,
    )
    return store, ckpt


def _train_step(engine, model, group, worker: Worker, timer: Any = NULL_TIMER) -> StepStats:
    """One global batch on this rank: accum micro-batches, one optimizer step."""
    accum = len(group)
    local = torch.tensor([float(sum(mb.num_targets for mb in group))])
    num_targets = max(_all_reduce(local)[0].item(), 1.0)  # the GLOBAL normaliser
    scale = worker.world_size / num_targets
    ce_sum = aux_sum = 0.0
    counts = torch.zeros(6, dtype=torch.float64)
    norm = None
    for i, mb in enumerate(group):
        with timer.phase("data"):
            batch = mb.batch.to(worker.device)
        with timer.phase("forward"):
            out = engine(batch)
            loss = out.ce_sum * scale + out.aux_loss / accum
        with timer.phase("backward"):
            engine.backward(loss, scale_wrt_gas=False)
        if i == accum - 1 and not engine_tracks_grad_norm(engine):
            norm = grad_norm_before_step(model)
        with timer.phase("optimizer"):
            engine.step()
        ce_sum += out.ce_sum.detach().item()
        aux_sum += out.aux_loss.detach().item()
        slots = batch.image_slots
        lengths = batch.sequence_lengths() if mb.samples else []
        counts += torch.tensor(
            [
                float(sum(lengths)),
                float(mb.num_samples),
                float(mb.num_image_tokens),
                float((slots == 1).sum()),
                float((slots == 0).sum()),
                float(sum(t * t for t in lengths)),  # the attention term's count (metrics.FlopModel)
            ],
            dtype=torch.float64,
        )
    totals = _all_reduce(torch.tensor([ce_sum, aux_sum / accum], dtype=torch.float64))
    counts = _all_reduce(counts)
    ce = totals[0].item() / num_targets
    aux = totals[1].item() / worker.world_size
    return StepStats(
        grad_norm=norm if norm is not None else grad_norm(engine),
        loss=ce + aux,
        ce=ce,
        aux=aux,
        targets=int(num_targets),
        tokens=int(counts[0]),
        samples=int(counts[1]),
        image_tokens=int(counts[2]),
        views=int(counts[3]),
        skipped_views=int(counts[4]),
        squared_lengths=int(counts[5]),
    )


def _max_across_ranks(value: float) -> float:
    """The largest `value` of all ranks (one all-reduce of one number)."""
    return float(all_reduce_host(torch.tensor([value]), op="max")[0].item())  # NCCL: on the GPU


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    return all_reduce_host(t)  # on the GPU under NCCL, which reduces no host tensor


# ---------------------------------------------------------------------------- tracking


def _open_tracker(
    cfg: RunConfig, worker: Worker, store, trainable: int, restored_step: int, total: int, mfu_peak: str = ""
):
    """Rank 0's MLflow tracker; a no-op tracker on other ranks and when `tracking.enabled` is false."""
    if worker.rank != 0 or not cfg.tracking.enabled:
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
            "sphinxx.trainable_params": trainable,
            "sphinxx.mfu_peak": mfu_peak,
        }
    )
    tracker.log_text(to_yaml(cfg), "config.yaml")
    return tracker


def _heldout_evaluator(cfg: RunConfig, worker: Worker, data: Any):
    """The held-out evaluator of this rank (docs/training.md, "Held-out evaluation"); None without a split."""
    if not cfg.data.heldout_records:
        return None
    from sphinxx.jobs.data.dataset import SamplePipeline
    from sphinxx.jobs.evaluation import HeldoutEvaluator

    pipeline = SamplePipeline(data.encoder, data.image)
    return HeldoutEvaluator(
        data.mixture, pipeline, cfg.train.micro_batch, worker.rank, worker.world_size, _all_reduce
    )


def _log_heldout(tracker, worker: Worker, heldout: dict[str, float], state) -> None:
    """Against the global step, and (`*_by_tokens`, MLflow step = tokens seen) against D."""
    if not heldout:
        return
    tracker.log_metrics(heldout, state.step)
    overall = {f"{k}_by_tokens": v for k, v in heldout.items() if k in ("heldout_loss", "heldout_bpb")}
    tracker.log_metrics(overall, state.tokens_seen)
    if worker.rank == 0:
        print(f"[sphinxx] held-out at step {state.step}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in heldout.items() if "/source:" not in k), flush=True)  # fmt: skip


def _log_estimate(cfg: RunConfig, worker: Worker, steps: int, staged: list[Any], tracker) -> dict[str, float]:
    """The run's cost estimate (docs/training.md, "Memory and cost estimates") on the job log and as
    MLflow tags, so what the run measures (step time, MFU, memory) can be compared with it; returns
    the numbers the checkpoints commit with their metrics ({} when there is no estimate)."""
    import dataclasses

    from sphinxx.jobs.cost import run_cost
    from sphinxx.model.memory import run_memory, setup_from_run

    try:
        fixed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))
        memory = run_memory(cfg, setup_from_run(cfg, world_size=worker.world_size))
        cost = run_cost(fixed, memory=memory, stage_bytes=sum(r.bytes_total for r in staged))
    except Exception as err:  # noqa: BLE001 - an estimate never stops a run
        print(f"[sphinxx] no cost estimate: {type(err).__name__}: {err}", flush=True)
        return {}
    print(
        f"[sphinxx] estimate at world size {worker.world_size}: {cost['memory_per_rank_gib']:.2f} GiB per rank, "
        f"{cost['tokens']:,} tokens (upper bound), {cost['flops']:.3e} FLOPs, "
        f"{cost['gpu_hours']:.3g} GPU-hours on {cost['gpu']} at MFU {cost['mfu']}",
        flush=True,
    )
    tracker.set_tags(
        {
            "sphinxx.estimate.memory_per_rank_gib": round(cost["memory_per_rank_gib"], 3),
            "sphinxx.estimate.tokens": cost["tokens"],
            "sphinxx.estimate.flops": f"{cost['flops']:.4e}",
            "sphinxx.estimate.gpu_hours": f"{cost['gpu_hours']:.4g}",
            "sphinxx.estimate.gpu": f"{cost['gpu']} at MFU {cost['mfu']}",
        }
    )
    return {
        "estimate_memory_per_rank_gib": round(float(cost["memory_per_rank_gib"]), 3),
        "estimate_flops": float(cost["flops"]),
        "estimate_gpu_hours": float(cost["gpu_hours"]),
    }


def pointer_name(step: int, attempt: int, commit_id: str) -> str:
    """The name of the pointer checkpoint Ray Train keeps for one commit: unique per commit.

    Ray deletes the folders of its older pointers (`CheckpointConfig(num_to_keep)`), by name. A
    retry that resumes before Ray's newest pointer (a rollback, a damaged newest checkpoint)
    commits those steps again; named by step alone, Ray would hold two entries for one folder,
    delete it once and fail on the second delete (FileNotFoundError in its checkpoint manager).
    The attempt and the commit id make every name new. Pure.
    """
    return f"pointer-{step:09d}-a{attempt}-{commit_id[:8]}"


def _after_checkpoint(info, metrics: dict[str, Any], worker: Worker, tracker, step: int) -> None:
    """Tell MLflow and Ray about a commit (rank 0 has `info`; every rank must call report)."""
    pointer_dir = None
    if info is not None:
        tracker.set_tags({"checkpoint_uri": info.uri, "checkpoint_step": step})
        tracker.log_metrics({"checkpoint_step": step}, step)
        # The folder's name is the name Ray keeps it under (ray_worker reports it as is).
        pointer_dir = os.path.join(
            tempfile.mkdtemp(prefix="sphinxx-pointer-"),
            pointer_name(step, worker.attempt, info.manifest.commit_id),
        )
        os.makedirs(pointer_dir)
        with open(os.path.join(pointer_dir, "pointer.json"), "w") as fh:
            json.dump({"step": step, "uri": info.uri, "commit_id": info.manifest.commit_id}, fh)
        metrics = {**metrics, "checkpoint_uri": info.uri}
    worker.report(dict(metrics), pointer_dir)
