"""The job's training path on one GPU, measured: `sphinxx.jobs.loop.train` under DeepSpeed ZeRO-2.

Run on the GPU machine from the repo root (no install needed: the repo folders are mapped onto the
`sphinxx` namespace; DeepSpeed, omegaconf and pydantic come from bench/gpu_setup.sh):

    python3 bench/gpu_train.py --flavor tinyllama-1.1b
    python3 bench/gpu_train.py --flavor mixtral-8x7b          # 3 decoder layers, 8 experts, top-2

CPU smoke of this script (what tests/jobs/test_gpu_train_bench.py runs; debug flavor, fp32, gloo):

    .venv/bin/python bench/gpu_train.py --device cpu --flavor debug

What runs is what a RayJob's worker runs, `loop.train(cfg, Worker(...))`, in one process with
torch.distributed at world size 1 (NCCL on CUDA, gloo on CPU) and no Ray:

- the run config of the flavor's preset (`tinyllama-1.1b`, `mixtral-8x7b`, `debug`, `debug-moe`),
  with one worker, ZeRO-2, bf16 on CUDA (fp32 on CPU), activation checkpointing as the preset and
  the flavor set it (on for Mixtral), `moe_kernel: auto` for Mixtral (MegaBlocks when it imports),
  `model.overrides.n_layers` from `--layers` for the MoE flavor (a Mixtral-shaped model that
  fits one GPU: at 3 layers ZeRO-2 holds about 20 bytes per trainable parameter, 93 GB);
- real samples: `sphinxx data synth` written to local disk, only its image sources, canvas 448
  (so each image has up to 5 real views; skipped cells are skip tokens), the data pipeline of the
  job with `--data-workers` loader processes, a new global batch every step (one epoch is sized
  to cover the run);
- no MLflow (`tracking.enabled: false`: rank 0 gets the no-op tracker), no S3 (checkpoints under
  `file://` in the work folder). The run's step budget is one more than the steps measured, and
  the bench stops right after the last measured step, so the final checkpoint (tens of GB of
  weights and Adam state) is never written: this measures training, not storage.

Timing: `jobs.timing.PhaseTimer`, passed to `train`: CUDA events around the loop's phases (the
frozen towers by forward hooks on `model.vision`), read once per step. Per step: `data_wait`
(next global batch from the loader + copy to the GPU), `vision` (the frozen towers' forward),
`llm_forward` (the rest of the forward: projector, sequence assembly, decoder, loss), `llm_backward`,
`optimizer` (the engine's step: ZeRO-2 gradient handling, clipping, AdamW, bf16 copy-back),
`other` (the loop's bookkeeping: loss all-reduce, metrics, expert load). The first `--warmup`
steps are excluded from the summary.

FLOPs and MFU: the job's own `metrics.FlopModel` (the loop hands it to the timer), on what each
step really processed:

    step FLOPs = 6 N x positions                (LLM, N = active decoder params w/o embedding table)
               + 12 L d x sum over sequences of T^2   (attention, T = each sequence's real length)
               + 4 P x image positions           (projector: forward + weight gradient)
               + towers' forward FLOPs x views   (ConvNeXt-XXL + DINOv2-g, frozen: forward only)

    MFU = sum of step FLOPs / sum of step wall times / peak FLOP/s

with the peak from `progress.device_peak`: the GPU's published dense bf16 figure (H100/H200 SXM
989 TFLOP/s; the source is printed), an estimate on CPU (`peak_is_estimate`, `mfu_is_estimate`).
Positions count text, image and skip tokens, never padding; `llm_mfu` is the LLM terms alone.

JSON lines on stdout (everything else, DeepSpeed's logs included, goes to stderr):
`env` (device, versions, DeepSpeed, the MoE kernel available), `config` (the run, parameters,
the FLOP model, the peak and the kernel chosen), one `step` per step, `summary` (tokens/s,
samples/s, MFU, peak memory, the split of step time).
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("tinyllama-1.1b", "mixtral-8x7b", "debug", "debug-moe")
IMAGE_DOMAINS = ("vision", "vision-language", "ocr", "set-of-mark")
MAX_INTERVAL = 100_000_000  # schema maximum: no progress line and no checkpoint before the end


class BenchDone(Exception):
    """Raised by the timer after the last measured step: the loop stops before its final save."""


class Terminated(BaseException):
    """SIGTERM (bench/gpu_checks.sh's time limit): stop measuring, print the summary so far. A
    BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it."""


class SigtermFlag:
    """Set by SIGTERM; the bench raises `Terminated` at the next step boundary.

    Raising from the handler itself would land wherever the main thread happens to be: inside
    the data loader's read-ahead generator that leaves a ThreadPoolExecutor the interpreter then
    waits on forever. A step lasts seconds, inside the 10 s `timeout --kill-after` gives.
    """

    def __init__(self) -> None:
        self.set = False

    def __call__(self, signum, frame) -> None:
        self.set = True


def stop_on_sigterm() -> SigtermFlag:
    """SIGTERM ends the measurement at the next step, with a summary of the steps measured so far.

    The job's loop would instead finish its step and save a checkpoint (`jobs.preemption`):
    right for a preempted worker, but here tens of GB of weights and Adam state written in the
    10 s before `timeout --kill-after` kills the process, and no summary. So the loop's handler
    is not installed in this process (as in a Ray worker thread, where Python cannot install one).
    """
    from sphinxx.jobs.preemption import StopSignal

    flag = SigtermFlag()
    StopSignal.install = lambda self: False  # type: ignore[method-assign]
    signal.signal(signal.SIGTERM, flag)
    return flag


def bootstrap_sphinxx() -> None:
    """Map the repo's folders onto the `sphinxx` namespace when the package is not installed."""
    try:
        import sphinxx.jobs.loop  # noqa: F401

        return
    except ImportError:
        pass
    for name, folder in (
        ("sphinxx", "sphinxx"),
        ("sphinxx.jobs", "jobs"),
        ("sphinxx.model", "model"),
        ("sphinxx.storage", "storage"),
    ):
        mod = types.ModuleType(name)
        mod.__path__ = [str(ROOT / folder)]
        sys.modules[name] = mod


def json_stdout():
    """Our JSON lines keep stdout; fd 1 itself (DeepSpeed's log handler, NCCL, prints) goes to stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


class Emitter:
    def __init__(self, stream):
        self.stream = stream

    def __call__(self, kind: str, **row: Any) -> None:
        self.stream.write(json.dumps({"kind": kind, **row}) + "\n")
        self.stream.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavor", default="tinyllama-1.1b", choices=PRESETS)
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--micro", type=int, default=None, help="samples per step (default 8 on CUDA, 1 on CPU)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="measured steps (default 12 on CUDA, 2 on CPU)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="steps before (default 3 on CUDA, 1 on CPU)")
    parser.add_argument(
        "--layers", type=int, default=3, help="decoder layers of the MoE flavor (mixtral-8x7b)"
    )
    parser.add_argument("--data-workers", type=int, default=None, help="DataLoader processes (default 6 / 0)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads of the worker (default 8 / 2)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop after this much training, if a step was measured (default 150 / none)",
    )
    parser.add_argument(
        "--workdir", default=None, help="synthetic data and checkpoint folder (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    defaults = (("micro", 8, 1), ("steps", 12, 2), ("warmup", 3, 1), ("data_workers", 6, 0),
                ("threads", 8, 2), ("max_seconds", 150.0, math.inf))  # fmt: skip
    for name, gpu, cpu in defaults:
        if getattr(args, name) is None:
            setattr(args, name, gpu if cuda else cpu)
    return args


# ---------------------------------------------------------------------------- setup


def env_row(device: str) -> dict[str, Any]:
    import torch

    try:
        import deepspeed

        ds_version = deepspeed.__version__
    except ImportError as err:  # the run below fails the same way; say it first
        ds_version = f"not importable: {err}"
    from sphinxx.model import moe_kernels

    return {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "deepspeed": ds_version,
        "python": sys.version.split()[0],
        "megablocks_error": moe_kernels.megablocks_import_error() if device.startswith("cuda") else "CPU run",
    }


def write_data(workdir: Path, records_needed: int):
    """The synthetic set, large enough that its image sources cover `records_needed` once."""
    from sphinxx.jobs.data.synth import write_synth
    from sphinxx.jobs.data.synth_tasks import SOURCES

    share = sum(s for _, domain, s, _ in SOURCES if domain in IMAGE_DOMAINS)
    size = max(len(SOURCES), math.ceil(records_needed / share) + len(SOURCES))
    return write_synth(str(workdir / "synth"), size=size), size


def run_config(args: argparse.Namespace, synth, workdir: Path):
    """The flavor's preset as one worker runs it here (module docstring)."""
    from sphinxx.schema.run import load_config

    cuda = args.device.startswith("cuda")
    sources = [
        {"name": name, "uri": f"{synth.root}/{name}", "domain": m.domain}
        for name, m in synth.manifests.items()
        if m.domain in IMAGE_DOMAINS
    ]
    overrides = [
        "run_id=gpu-train-bench",
        f"storage.uri={(workdir / 'checkpoints').as_uri()}",
        "tracking.enabled=false",
        f"train.micro_batch={args.micro}",
        f"train.global_batch={args.micro}",
        f"train.steps={args.warmup + args.steps + 1}",
        f"train.checkpoint_interval={MAX_INTERVAL}",
        f"train.log_interval={MAX_INTERVAL}",
        f"train.precision={'bf16' if cuda else 'fp32'}",
        "parallel.zero_stage=2",
        "parallel.ep_size=1",
        "parallel.min_workers=1",
        "parallel.max_workers=1",
        f"parallel.gpus_per_worker={1 if cuda else 0}",
        f"parallel.cpus_per_worker={args.threads}",
        "data.canvas=448",
        f"data.num_workers={args.data_workers}",
    ]
    if args.flavor == "mixtral-8x7b":
        overrides += [f"model.overrides.n_layers={args.layers}", "model.moe_kernel=auto"]
    data = {"data": {"tokenizer": synth.tokenizer_uri, "sources": sources}}
    return load_config(preset=args.flavor, data=data, overrides=overrides)


def init_process_group(device: str) -> None:
    import socket

    import torch
    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    os.environ.update(LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", rank=0, world_size=1)


def moe_kernel(model, device: str) -> str | None:
    """The expert kernel the model's MoE layers resolve to for this run's activations."""
    import torch

    from sphinxx.model import moe_kernels
    from sphinxx.model.moe import MoE

    layer = next((m for m in model.modules() if isinstance(m, MoE)), None)
    if layer is None:
        return None
    dtype = next(layer.parameters()).dtype
    x = torch.empty(1, layer.args.dim, device=device, dtype=dtype)
    ep_attached = layer.ep is not None and layer.ep.size > 1  # as MoE._experts decides
    return moe_kernels.resolve_kernel(layer.args.kernel, x, layer.args, ep_attached)


# ---------------------------------------------------------------------------- measuring


class Bench:
    """The timer's callbacks: a `config` line at start, a `step` line per step, the stop."""

    def __init__(self, args: argparse.Namespace, cfg, emit: Emitter, extra: dict[str, Any]):
        self.args, self.cfg, self.emit, self.extra = args, cfg, emit, extra
        self.rows: list[dict[str, Any]] = []
        self.flops: Any = None
        self.started = time.monotonic()
        self.training_started = math.inf
        self.sigterm: SigtermFlag | None = None

    def config(self, model, flops) -> None:
        from sphinxx.jobs.metrics import model_sizes
        from sphinxx.model.info import parameter_counts

        self.flops = flops
        counts = parameter_counts(model)
        a = model.args.llm
        cfg = self.cfg
        self.emit(
            "config",
            flavor=cfg.model.flavor,
            n_layers=a.n_layers,
            num_experts=a.num_experts,
            top_k=a.top_k if a.num_experts else None,
            moe_kernel=moe_kernel(model, self.args.device),
            micro_batch=cfg.train.micro_batch,
            zero_stage=cfg.parallel.zero_stage,
            precision=cfg.train.precision,
            activation_checkpointing=bool(cfg.model.activation_checkpointing or a.activation_checkpointing),
            canvas=cfg.data.canvas,
            seq_len=cfg.data.seq_len,
            sources=[s.name for s in cfg.data.sources],
            data_workers=cfg.data.num_workers,
            steps=self.args.steps,
            warmup=self.args.warmup,
            trainable_params=counts["trainable"],
            frozen_params=counts["frozen"],
            num_params=model_sizes(model)["num_params"],
            flops_per_position_6n=flops.per_token,
            flops_per_target_lm_head=flops.per_target,
            flops_attention_per_squared_length_12ld=flops.per_squared_length,
            flops_projector_per_image_position=flops.per_image_token,
            flops_towers_per_view=flops.per_view,
            peak_tflops=round(flops.peak.flops / 1e12, 4),
            peak_source=flops.peak.source,
            peak_is_estimate=flops.peak.estimate,
            setup_seconds=round(time.monotonic() - self.started, 1),
            **self.extra,
        )
        self.training_started = time.monotonic()

    def step(self, step: int, wall: float, phases: dict[str, float], stats, metrics: dict[str, Any]) -> None:
        flops = self.flops
        llm = (
            flops.per_token * stats.tokens
            + flops.per_target * stats.targets
            + flops.per_squared_length * stats.squared_lengths
        )
        total = flops.step_flops(stats)
        row = {
            "step": step,
            "warmup": step <= self.args.warmup,
            "seconds": wall,
            "data_wait": phases["data"],
            "vision": phases["vision"],
            "llm_forward": phases["forward"] - phases["vision"],
            "llm_backward": phases["backward"],
            "optimizer": phases["optimizer"],
            "other": wall - sum(phases[p] for p in ("data", "forward", "backward", "optimizer")),
            "loss": stats.loss,
            "positions": stats.tokens,
            "samples": stats.samples,
            "image_positions": stats.image_tokens,
            "views": stats.views,
            "skipped_views": stats.skipped_views,
            "tflop": total / 1e12,
            "llm_tflop": llm / 1e12,
            "mfu": total / wall / flops.peak.flops,
            "job_mfu_metric": metrics.get("mfu", 0.0),  # the loop's own, over its 20-step window
        }
        self.rows.append(row)
        self.emit("step", **{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        measured = [r for r in self.rows if not r["warmup"]]
        if self.sigterm is not None and self.sigterm.set:
            raise Terminated
        if len(measured) >= self.args.steps:
            raise BenchDone
        if measured and time.monotonic() - self.training_started > self.args.max_seconds:
            self.emit(
                "note", message=f"--max-seconds {self.args.max_seconds}: {len(measured)} steps measured"
            )
            raise BenchDone


def summary(rows: list[dict[str, Any]], flops, device: str) -> dict[str, Any]:
    import torch

    measured = [r for r in rows if not r["warmup"]]
    if not measured or flops is None:
        return {"error": "no measured step"}
    seconds = sum(r["seconds"] for r in measured)
    total = sum(r["tflop"] for r in measured) * 1e12
    llm = sum(r["llm_tflop"] for r in measured) * 1e12
    split = {}
    for name in ("vision", "llm_forward", "llm_backward", "optimizer", "data_wait", "other"):
        mean = sum(r[name] for r in measured) / len(measured)
        split[name] = {"seconds": round(mean, 4), "share": round(mean * len(measured) / seconds, 3)}
    cuda = device.startswith("cuda")
    return {
        "steps": len(measured),
        "sec_per_step_median": round(statistics.median(r["seconds"] for r in measured), 4),
        "tokens_per_s": round(sum(r["positions"] for r in measured) / seconds, 1),
        "samples_per_s": round(sum(r["samples"] for r in measured) / seconds, 2),
        "model_tflops_per_s": round(total / seconds / 1e12, 3),
        "mfu": round(total / seconds / flops.peak.flops, 4),
        "llm_mfu": round(llm / seconds / flops.peak.flops, 4),
        "peak_tflops": round(flops.peak.flops / 1e12, 4),
        "peak_source": flops.peak.source,
        "mfu_is_estimate": flops.peak.estimate,  # the peak was measured here, not a datasheet's
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
        "step_time_split": split,
        "timing": "CUDA events per phase, one sync per step" if cuda else "perf_counter per phase",
        "loss_first_last": [measured[0]["loss"], measured[-1]["loss"]],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    emit = Emitter(json_stdout())
    bootstrap_sphinxx()
    import torch
    import torch.distributed as dist

    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.loop import train
    from sphinxx.jobs.timing import PhaseTimer

    started = time.monotonic()
    device = "cuda:0" if args.device == "cuda" else args.device
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    env = env_row(device)
    emit("env", **env)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu-train-"))
    if not args.workdir:  # a folder of ours: data and checkpoints go with the process
        atexit.register(shutil.rmtree, workdir, True)
    needed = (args.warmup + args.steps + 1) * args.micro
    synth, size = write_data(workdir, needed)
    cfg = run_config(args, synth, workdir)
    extra = {"synth_records": size, "synth_seconds": round(time.monotonic() - started, 1)}
    init_process_group(device)
    bench = Bench(args, cfg, emit, extra)
    bench.sigterm = stop_on_sigterm()
    failed = None
    try:
        train(
            cfg,
            Worker(rank=0, world_size=1, local_rank=0, device=device),
            PhaseTimer(device, bench.step, bench.config),
        )
        emit("note", message="the run ended before the measured steps were done")
    except BenchDone:
        pass
    except Terminated:
        emit(
            "note", message=f"SIGTERM (time limit): {sum(not r['warmup'] for r in bench.rows)} steps measured"
        )
    except Exception as err:  # noqa: BLE001 - reported as a line; the summary says what was measured
        failed = f"{type(err).__name__}: {str(err)[:1000]}"
        emit("error", message=failed)
        import traceback

        traceback.print_exc()
    result = summary(bench.rows, bench.flops, device)
    emit("summary", flavor=args.flavor, device=env["device"], **result, failed=failed,
         total_seconds=round(time.monotonic() - started, 1))  # fmt: skip
    dist.destroy_process_group()
    return 0 if failed is None and "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
