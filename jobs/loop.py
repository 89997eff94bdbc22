"""The per-worker training loop: what every worker runs once its model and engine are built.

One worker = one data-parallel rank. `train` is the worker's entry point and the only function
here that sees the whole run config; it hands each part its own section, in named steps:

    build_parts     data (`data`, `train`), SPHINX-X (`model` + the decoder admission checked),
                    DeepSpeed (`train`, `parallel`), the schedule (`train`), the store and the
                    checkpointer (`storage`)
    resume          the latest committed checkpoint, at any world size
    open_tracker    rank 0's MLflow run (`tracking`)
    StepLoop.run    global batches until the step budget is done:

    for every optimizer step s (global batch s of the elastic sampler):
        N = target tokens of the whole global batch (one all-reduce)
        for each of this rank's `accum` micro-batches:
            backward( ce_sum * W / N  +  aux / accum )       # DeepSpeed then averages over W
        optimizer step with lr(s), clipped by train.grad_clip

so the gradient is d/dθ [ sum of CE over the global batch / N + mean aux ] whatever the world
size W and accumulation are (docs/model.md, "Loss normalisation over the global batch"): an
elastic resize changes nothing but speed.

A worker asked to stop (SIGTERM, the pod's preStop hook: `preemption.StopSignal`) finishes its
step; all ranks agree at the end of every step (one all-reduce of a flag), save that step, and
raise `preemption.Preempted`, so the next segment resumes there, losing no step. The same vote
carries rank 0's look for room to grow (`resize.CapacityWatch`): the group then commits the step
and raises `preemption.Resized`, and the next segment starts bigger (docs/training.md, "Resizes
and preemptions"). Every commit records the run's planned stops (`preemptions`, `resizes`).

Every `train.checkpoint_interval` steps and at the end all ranks save through
`checkpoint.Checkpointer` (commit protocol of `sphinxx.storage`), committing the loss and the
scaling-law inputs (`metrics.checkpoint_metrics`). With `train.async_save` (the default) a
periodic save copies the state to host memory and returns; the upload and the commit run in the
background, and a failure raises at the next step (`Checkpointer.check`). The final save and a
stop's drain the save in flight and commit before the segment ends. For every commit that
landed, rank 0 then reports a pointer checkpoint to Ray Train (docs/storage.md, "Pointer
checkpoints for Ray Train"; an asynchronous commit at the next save), tracks to MLflow (unless
`tracking.enabled` is false) and prints progress. The loop itself knows nothing of Ray:
`ray_worker.train_loop_per_worker` adapts Ray's context to `Worker`, so tests and benchmarks
drive `train()` in plain processes; a benchmark may also pass a `timing.PhaseTimer` to time the
phases of every step (`jobs.timing`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from sphinxx.evals.report import entry, mlflow_metrics, mlflow_name
from sphinxx.jobs.audit import SampleTrace
from sphinxx.jobs.benchmarks import BenchmarkEvaluator, BenchmarkResult, benchmark_evaluator
from sphinxx.jobs.build import build_model, check_vocab, loaded_tower_prefixes
from sphinxx.jobs.checkpoint import Checkpointer, RunState
from sphinxx.jobs.context import Worker
from sphinxx.jobs.cost import run_estimate
from sphinxx.jobs.data.collate import LoadedBatch
from sphinxx.jobs.data.dataset import SamplePipeline
from sphinxx.jobs.data.loader import DataStream, build_data
from sphinxx.jobs.engine import build_engine, expert_parallel_size
from sphinxx.jobs.evaluation import HeldoutEvaluator, due
from sphinxx.jobs.metrics import (
    FlopModel,
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
from sphinxx.jobs.preemption import PREEMPTED, RESIZE, Preempted, Resized, StopSignal
from sphinxx.jobs.progress import ProgressPrinter, ProgressWriter, Throughput
from sphinxx.jobs.resize import CapacityWatch
from sphinxx.jobs.schedule import Schedule
from sphinxx.jobs.stores import retention_policy, run_store, storage_options
from sphinxx.jobs.timing import NULL_TIMER
from sphinxx.jobs.tracking import open_tracker
from sphinxx.model.sphinx import SphinxX
from sphinxx.schema.run import (
    ParallelConfig,
    RunConfig,
    StorageConfig,
    TrainConfig,
    flatten,
    run_decoder_args,
    to_yaml,
)
from sphinxx.storage import CheckpointInfo, CheckpointStore, RetentionPolicy
from sphinxx.storage.stage import StageReport


def train(cfg: RunConfig, worker: Worker, timer: Any = None) -> dict[str, Any]:
    """Train until the step budget is done; returns the final metrics (rank 0's are complete).

    The result carries the model's sizes as the checkpoints do: `num_params` (N of the scaling
    law) and `num_params_total` (every trainable parameter), and `mfu_peak_source`, where the
    peak behind `mfu` comes from. `timer` (a `timing.PhaseTimer`, benchmarks only) times each
    step's phases; None times nothing.
    """
    torch.set_num_threads(max(1, cfg.parallel.cpus_per_worker))
    parts = build_parts(cfg, worker)
    state = resume(parts, worker)
    tags = run_tags(cfg.model.flavor, cfg.data.fraction, worker, parts)
    tracker = open_tracker(
        cfg.tracking, cfg.run_id, worker, parts.store,
        restored_step=state.step, params=flatten(cfg), config_text=to_yaml(cfg), tags=tags,
    )  # fmt: skip
    estimate = {}
    if worker.rank == 0:
        cost = run_estimate(cfg, worker.world_size, parts.total, sum(r.bytes_total for r in parts.staged))
        estimate = log_estimate(cost, worker.world_size, tracker)
    evaluator = heldout_evaluator(cfg.data.heldout_records, cfg.train.micro_batch, worker, parts.data)
    bench = benchmark_evaluator(
        cfg.eval.benchmarks, parts.data.encoder, parts.data.image, worker.rank, worker.world_size,
        cfg.train.eval_interval, options=storage_options(cfg.storage),
    )  # fmt: skip
    tag_staging(tracker, parts.staged)
    watch = capacity_watch(cfg.parallel, worker)
    loop = StepLoop(
        parts, state, cfg.train, worker, tracker, evaluator, estimate, timer or NULL_TIMER, watch, bench
    )
    metrics = loop.run()
    if state.step > 0:
        tracker.log_metrics(parts.data.stats.metrics(), state.step)
    tracker.close(timeout=120)
    return {**metrics, **parts.sizes, "mfu_peak_source": parts.flops.peak.source}


# ------------------------------------------------------------------------------- the parts


@dataclass
class Parts:
    """What one worker trains with, each built from its own section of the run config."""

    data: DataStream
    model: SphinxX
    engine: Any  # DeepSpeedEngine
    optimizer: Any
    schedule: Schedule
    store: CheckpointStore
    ckpt: Checkpointer
    sizes: dict[str, int]  # num_params / num_params_total (metrics.model_sizes)
    flops: FlopModel
    staged: list[StageReport]  # what staging the weights cost on this node

    @property
    def total(self) -> int:
        """Optimizer steps of the run (`train.steps`, or derived from the data)."""
        return int(self.data.stop_step or 0)


def build_parts(cfg: RunConfig, worker: Worker) -> Parts:
    """Data, model, engine, schedule, store and checkpointer of this worker, section by section."""
    data = build_data(
        cfg.data,
        cfg.train,
        use_skip_token=cfg.model.use_skip_token,
        rank=worker.rank,
        world_size=worker.world_size,
    )
    staged: list[StageReport] = []
    model, _ = build_model(
        cfg.model, run_decoder_args(cfg), worker,
        seed=cfg.train.seed, precision=cfg.train.precision, options=storage_options(cfg.storage),
        staged=staged,
    )  # fmt: skip
    check_vocab(data, model)
    sizes = model_sizes(model)  # before the engine: under ZeRO-3 DeepSpeed empties what it partitions
    engine, optimizer = build_engine(model, cfg.train, cfg.parallel, worker, data.accum_steps)
    train = cfg.train
    schedule = Schedule(int(data.stop_step or 0), train.lr, train.min_lr, train.warmup, train.schedule)
    store = open_store(cfg.run_id, cfg.storage, worker)
    ckpt = open_checkpointer(
        store, model, optimizer, worker,
        seed=train.seed, zero_stage=cfg.parallel.zero_stage,
        skip_prefixes=loaded_tower_prefixes(cfg.model), policy=retention_policy(cfg.storage),
        scratch=cfg.storage.scratch,
    )  # fmt: skip
    flops = flop_model(model, worker.device)
    return Parts(data, model, engine, optimizer, schedule, store, ckpt, sizes, flops, staged)


def capacity_watch(parallel: ParallelConfig, worker: Worker) -> CapacityWatch:
    """Rank 0's look for room to grow (`parallel.resize_check_seconds`); idle on other ranks, and
    for the rest of a segment that a resize started no bigger than it was (Ray placed no more
    workers than before: looking again would only restart it again)."""
    per_worker = {"CPU": float(parallel.cpus_per_worker), "GPU": float(parallel.gpus_per_worker)}
    probe = worker.free_resources if worker.rank == 0 else None
    if worker.resized_from and worker.world_size <= worker.resized_from:
        probe = None
        if worker.rank == 0:
            print(
                f"[sphinxx] the resize left {worker.world_size} worker(s): no more looks for room", flush=True
            )
    return CapacityWatch(
        probe, per_worker, worker.world_size, parallel.max_workers,
        every_s=float(parallel.resize_check_seconds), settle_s=float(parallel.resize_settle_seconds),
    )  # fmt: skip


def open_store(run_id: str, storage: StorageConfig, worker: Worker) -> CheckpointStore:
    """The run's store (`storage` section); rank 0 removes what a dead attempt left behind
    (docs/storage.md, "Retention and partial-folder cleanup"): no other attempt is live."""
    store = run_store(run_id, storage, attempt=worker.attempt)
    if worker.rank == 0:
        store.clean_partial(grace_s=0)
    return store


def open_checkpointer(
    store: CheckpointStore,
    model: torch.nn.Module,
    optimizer: Any,
    worker: Worker,
    *,
    seed: int,
    zero_stage: int,
    skip_prefixes: tuple[str, ...] = (),
    policy: RetentionPolicy | None = None,
    scratch: str | None = None,
) -> Checkpointer:
    """This rank's Checkpointer; the metadata every manifest records about the run's layout."""
    return Checkpointer(
        store,
        model,
        optimizer,
        worker.rank,
        worker.world_size,
        seed=seed,
        skip_prefixes=skip_prefixes,
        metadata={
            "zero_stage": zero_stage,
            "ep_size": expert_parallel_size(model),
            "dp_size": worker.world_size,
            "code_version": worker.code_version,
            "extra": {"attempt": worker.attempt},
        },
        policy=policy,
        scratch=scratch,
    )


def resume(parts: Parts, worker: Worker) -> RunState:
    """The run state of the latest committed checkpoint, loaded into the parts; a fresh one if none."""
    restored = parts.ckpt.restore()
    if restored is None:
        return RunState(0, {}, parts.schedule.state_dict())
    state = restored.state
    parts.data.load_state_dict({"sampler": state.sampler, "stats": restored.rank_data or {}})
    parts.engine.global_steps = state.step
    if worker.rank == 0:
        print(f"[sphinxx] resumed from {restored.info.uri} at step {state.step}/{parts.total}", flush=True)
    return state


def heldout_evaluator(
    heldout_records: int, micro_batch: int, worker: Worker, data: DataStream
) -> HeldoutEvaluator | None:
    """This rank's held-out evaluator (docs/training.md, "Held-out evaluation"); None without a split."""
    if not heldout_records:
        return None
    pipeline = SamplePipeline(data.encoder, data.image)
    return HeldoutEvaluator(data.mixture, pipeline, micro_batch, worker.rank, worker.world_size, _all_reduce)


# ------------------------------------------------------------------------------- the steps


class StepLoop:
    """Global batches from the restored step to the budget: step, log, evaluate, checkpoint, stop."""

    def __init__(
        self,
        parts: Parts,
        state: RunState,
        train: TrainConfig,
        worker: Worker,
        tracker: Any,
        evaluator: HeldoutEvaluator | None,
        estimate: dict[str, float],
        timer: Any,
        watch: CapacityWatch | None = None,
        bench: BenchmarkEvaluator | None = None,
    ):
        self.parts, self.state, self.train, self.worker = parts, state, train, worker
        self.tracker, self.evaluator, self.estimate, self.timer = tracker, evaluator, estimate, timer
        self.meter = Throughput()
        self.meter.mark(state.step, 0, 0)
        self.printer = ProgressPrinter(
            parts.total, train.log_interval, mfu_estimate=parts.flops.peak.estimate
        )
        self.record = ProgressWriter(
            parts.store, worker.attempt, train.progress_seconds, mfu_estimate=parts.flops.peak.estimate
        )
        self.sec_step = 0.0  # of the last logged window (`log` sets it; the record at a commit reads it)
        self.trace = SampleTrace.from_env(worker)
        self.stop = StopSignal.from_env(train.termination_grace_seconds)
        self.watch = watch or CapacityWatch(None, {}, worker.world_size, worker.world_size, 0)  # never grows
        self.lr = 0.0  # of the last step (`step` sets it, `log` reports it)
        self.bench = bench  # eval.benchmarks, scored by generation (jobs/benchmarks.py)

    def run(self) -> dict[str, Any]:
        """Every remaining global batch; returns the last step's metrics."""
        parts, state = self.parts, self.state
        self.timer.start(parts.model, parts.flops)
        metrics: dict[str, Any] = {"step": state.step}
        for group in _timed(parts.data.iter_steps(), self.timer):
            stats = self.step(group)
            parts.ckpt.check()  # a background commit that failed fails the run here, naming its step
            metrics = self.log(stats)
            self.evaluate()
            self.score_benchmarks()
            stopping = self.stop.vote(_max_across_ranks, grow=self.watch.room())
            if state.step % self.train.checkpoint_interval == 0 or state.step == parts.total or stopping:
                self.checkpoint(stats, metrics, stopping)
            if stopping and state.step < parts.total:
                self.stopped(stopping)
            self.timer.step_done(state.step, stats, metrics)
        parts.ckpt.drain()  # nothing left in flight (the final save drained already)
        return metrics

    def step(self, group: list[Any]) -> StepStats:
        """One optimizer step at the schedule's learning rate; the run state moves past it."""
        step = group[0].step
        lr = self.parts.schedule(step)
        for pg in self.parts.optimizer.param_groups:
            pg["lr"] = lr
        stats = train_step(self.parts.engine, self.parts.model, group, self.worker, self.timer)
        self.trace.record(step, group)
        self.state.step = step + 1
        self.state.tokens_seen += stats.tokens
        self.state.samples_seen += stats.samples
        self.lr = lr
        return stats

    def log(self, stats: StepStats) -> dict[str, Any]:
        """The step's metrics: to MLflow every `train.log_interval` steps, a progress line on rank 0."""
        state, flops = self.state, self.parts.flops
        self.meter.mark(state.step, stats.tokens, stats.samples, flops=flops.step_flops(stats))
        tok_s, smp_s, sec_step = self.meter.rates()
        metrics = {
            "step": state.step,
            "loss": stats.loss,
            "ce_loss": stats.ce,
            "aux_loss": stats.aux,
            "lr": self.lr,
            "grad_norm": stats.grad_norm,
            "tokens_per_s": tok_s,
            "samples_per_s": smp_s,
            "mfu": flops.mfu_of_rate(self.meter.flops_per_s(), self.worker.world_size),
            "visual_tokens": stats.image_tokens,
            "skip_ratio": stats.skipped_views / max(1, stats.views + stats.skipped_views),
            "tokens_seen": state.tokens_seen,
            **expert_load(self.parts.model),
        }
        if state.step % self.train.log_interval == 0 or state.step == self.parts.total:
            self.tracker.log_metrics({k: v for k, v in metrics.items() if k != "step"}, state.step)
        self.sec_step = sec_step
        if self.worker.rank == 0 and self.printer.maybe_print(state.step, metrics, sec_step):
            self.record.maybe_write(state.step, self.parts.total, metrics, sec_step)
        return metrics

    def evaluate(self) -> None:
        """The held-out split, when due (`train.eval_interval`, the last step; once per step)."""
        state = self.state
        done = state.extra.get("heldout", {}).get("step")
        if self.evaluator is None or not due(state.step, self.parts.total, self.train.eval_interval, done):
            return
        heldout = self.evaluator.run(self.parts.engine.module, self.worker.device).metrics()
        state.extra["heldout"] = {"step": state.step, "tokens_seen": state.tokens_seen, "metrics": heldout}
        _log_heldout(self.tracker, self.worker, heldout, state)

    def score_benchmarks(self) -> None:
        """The benchmarks of `eval.benchmarks`, when due (the last step, and every eval_interval
        with `at_eval_interval`; once per step: a resumed run keeps what a commit recorded)."""
        state, bench = self.state, self.bench
        done = state.extra.get("benchmarks", {}).get("step")
        if bench is None or not due(state.step, self.parts.total, bench.interval, done):
            return
        start = time.monotonic()
        results = bench.run(self.parts.engine.module)
        entries = {r.benchmark.name: entry(r.scores, state.step, state.tokens_seen) for r in results}
        state.extra["benchmarks"] = {"step": state.step, "tokens_seen": state.tokens_seen, "scores": entries}
        _log_benchmarks(self.tracker, self.worker, results, entries, state, time.monotonic() - start)

    def checkpoint(self, stats: StepStats, metrics: dict[str, Any], stopping: str | None) -> None:
        """Commit this step on every rank, with the metrics the operator and the fit read."""
        state, data = self.state, self.parts.data
        state.sampler = data.state_dict()["sampler"]
        committed = {
            **checkpoint_metrics(stats.loss, state.tokens_seen, self.parts.sizes),
            **self.estimate,  # the cost estimate and the measured MFU, shown in status.metrics
            "mfu": metrics["mfu"],
            **state.extra.get("heldout", {}).get("metrics", {}),
            **benchmark_metrics(state.extra),
            **stop_metrics(self.worker, stopping if state.step < self.parts.total else None),
        }
        final = state.step == self.parts.total
        ckpt, rank_data = self.parts.ckpt, data.state_dict()["stats"]
        try:
            if self.train.async_save and not final and stopping is None:
                ckpt.save_async(state, rank_data, committed)  # commits in the background
                info = None
            else:  # the last save of a segment drains the one in flight and commits before returning
                info = ckpt.save(state, rank_data, committed, final=final)
        finally:
            if stopping == PREEMPTED:
                self.stop.done()
        _after_checkpoint(ckpt.landed() + ([info] if info else []), metrics, self.worker, self.tracker)
        if self.worker.rank == 0:  # the record never lags a commit: status.progress is never behind it
            self.record.maybe_write(state.step, self.parts.total, metrics, self.sec_step, force=True)

    def stopped(self, kind: str) -> None:
        """A planned stop, committed: flush what tracking can in the grace left, then raise."""
        step, total = self.state.step, self.parts.total
        if kind == RESIZE:
            room = f"room for {self.watch.seen} more worker(s) beside {self.worker.world_size}"
            if self.worker.rank == 0:
                print(f"[sphinxx] stopped to grow ({room}) at step {step}/{total}", flush=True)
            self.tracker.close(timeout=30.0)
            raise Resized(step, room)
        if self.worker.rank == 0:
            print(f"[sphinxx] stopped on request ({self.stop.why}) at step {step}/{total}", flush=True)
        self.tracker.close(timeout=min(30.0, self.stop.remaining()))
        raise Preempted(step, self.stop.why or "stop requested")


def benchmark_metrics(extra: dict[str, Any]) -> dict[str, Any]:
    """`benchmarks` of the committed metrics: the entries of the last evaluation (`evals.report`). Pure."""
    scores = extra.get("benchmarks", {}).get("scores")
    return {"benchmarks": scores} if scores else {}


def stop_metrics(worker: Worker, stopping: str | None) -> dict[str, float]:
    """The run's planned stops as a commit records them (the operator shows them in status):
    `preemptions` and `resizes` including this commit's stop, and on a preemption's commit
    `preempted_in_attempt` (the operator's sign that an attempt which then failed was preempted). Pure."""
    out = {
        "preemptions": float(worker.preemptions + (stopping == PREEMPTED)),
        "resizes": float(worker.resizes + (stopping == RESIZE)),
    }
    if stopping == PREEMPTED:
        out["preempted_in_attempt"] = float(worker.attempt)
    return out


def _timed(steps: Iterable[list[LoadedBatch]], timer: Any) -> Iterator[list[LoadedBatch]]:
    """`steps`, with the wait for each next global batch timed as the `data` phase."""
    it = iter(steps)
    while True:
        with timer.phase("data"):
            group = next(it, None)
        if group is None:
            return
        yield group


def train_step(
    engine: Any, model: torch.nn.Module, group: list[LoadedBatch], worker: Worker, timer: Any = NULL_TIMER
) -> StepStats:
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
            batch = mb.on(worker.device)
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
        counts += _batch_counts(mb, batch)
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


def _batch_counts(mb: LoadedBatch, batch: Any) -> torch.Tensor:
    """What one micro-batch holds: tokens, samples, image tokens, kept and skipped views, and the
    attention term's count (sum of squared lengths, `metrics.FlopModel`)."""
    slots = batch.image_slots
    lengths = batch.sequence_lengths() if mb.samples else []
    return torch.tensor(
        [
            float(sum(lengths)),
            float(mb.num_samples),
            float(mb.num_image_tokens),
            float((slots == 1).sum()),
            float((slots == 0).sum()),
            float(sum(t * t for t in lengths)),
        ],
        dtype=torch.float64,
    )


def _max_across_ranks(value: float) -> float:
    """The largest `value` of all ranks (one all-reduce of one number)."""
    return float(all_reduce_host(torch.tensor([value]), op="max")[0].item())  # NCCL: on the GPU


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    return all_reduce_host(t)  # on the GPU under NCCL, which reduces no host tensor


# ---------------------------------------------------------------------------- tracking


def run_tags(flavor: str, data_fraction: float, worker: Worker, parts: Parts) -> dict[str, Any]:
    """The MLflow tags of this attempt: the point's axes and what this attempt trains with."""
    return {
        "sphinxx.flavor": flavor,
        "sphinxx.data_fraction": data_fraction,
        "sphinxx.world_size": worker.world_size,
        "sphinxx.attempt": worker.attempt,
        "sphinxx.code_version": worker.code_version,
        "sphinxx.total_steps": parts.total,
        "sphinxx.trainable_params": parts.sizes["num_params_total"],
        "sphinxx.mfu_peak": parts.flops.peak.source,
    }


def tag_staging(tracker: Any, staged: list[StageReport]) -> None:
    """What this attempt's weights cost to stage on rank 0's node (docs/training.md, "The model
    of a run"): tags, not metrics, since a resumed attempt skips metrics at steps it already logged."""
    if not staged:
        return
    tracker.set_tags(
        {
            "sphinxx.stage_bytes_downloaded": sum(r.bytes_downloaded for r in staged),
            "sphinxx.stage_bytes_total": sum(r.bytes_total for r in staged),
            "sphinxx.stage_seconds": round(sum(r.seconds for r in staged), 3),
        }
    )


def _log_heldout(tracker: Any, worker: Worker, heldout: dict[str, float], state: RunState) -> None:
    """Against the global step, and (`*_by_tokens`, MLflow step = tokens seen) against D."""
    if not heldout:
        return
    tracker.log_metrics(heldout, state.step)
    overall = {f"{k}_by_tokens": v for k, v in heldout.items() if k in ("heldout_loss", "heldout_bpb")}
    tracker.log_metrics(overall, state.tokens_seen)
    if worker.rank == 0:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in heldout.items() if "/source:" not in k)
        print(f"[sphinxx] held-out at step {state.step}: {shown}", flush=True)


def _log_benchmarks(
    tracker: Any,
    worker: Worker,
    results: list[BenchmarkResult],
    entries: dict[str, Any],
    state: RunState,
    seconds: float,
) -> None:
    """Scores against the global step and (`*_by_tokens`, MLflow step = tokens seen) against D, and
    what scoring took (`benchmark_seconds`); the per-sample predictions as
    `benchmarks/step-<step>/<name>.jsonl` artifacts (rank 0's tracker)."""
    metrics = mlflow_metrics(entries)
    tracker.log_metrics({**metrics, "benchmark_seconds": seconds}, state.step)
    tracker.log_metrics(
        {f"{k}_by_tokens": v for k, v in metrics.items() if k.count("/") == 1}, state.tokens_seen
    )
    if worker.rank != 0:
        return
    for result in results:
        name = mlflow_name(result.benchmark.name)
        tracker.log_text(result.predictions_jsonl(), f"benchmarks/step-{state.step:09d}/{name}.jsonl")
    shown = ", ".join(f"{name} {e['score']:.4f}" for name, e in entries.items())
    print(f"[sphinxx] benchmarks at step {state.step} ({seconds:.1f} s): {shown}", flush=True)


def log_estimate(cost: dict[str, Any] | None, world_size: int, tracker: Any) -> dict[str, float]:
    """The run's cost estimate (`cost.run_estimate`; docs/training.md, "Memory and cost estimates")
    on the job log and as MLflow tags, so what the run measures (step time, MFU, memory) can be
    compared with it; returns the numbers the checkpoints commit with their metrics ({} when there
    is no estimate)."""
    if cost is None:
        return {}
    print(
        f"[sphinxx] estimate at world size {world_size}: {cost['memory_per_rank_gib']:.2f} GiB per rank, "
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


def _after_checkpoint(
    landed: list[CheckpointInfo], metrics: dict[str, Any], worker: Worker, tracker: Any
) -> None:
    """Tell MLflow and Ray about the commits that landed since the last save (rank 0 has them: this
    save's, and an asynchronous one's once it committed); every rank must call report, once."""
    for done in landed:
        tracker.set_tags({"checkpoint_uri": done.uri, "checkpoint_step": done.step})
        tracker.log_metrics({"checkpoint_step": done.step}, done.step)
    pointer_dir = None
    info = landed[-1] if landed else None
    if info is not None:
        step = info.step
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
