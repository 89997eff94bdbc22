"""Throughput accounting, the peak FLOP/s behind MFU, and the progress line a user follows in `ray job logs`.

One line every `log_interval` steps on stdout, from rank 0 only:

    [sphinxx] step 120/1000 (12.0%) loss 2.3412 lr 1.90e-05 | 12,345 tok/s 48.2 samples/s mfu 31.2%
        | ETA 0:12:34

Throughput counts every position the LLM processes (text, image and skip tokens), which is what
the FLOPs estimate is per. MFU = achieved model FLOPs / peak FLOP/s of the workers' devices
(docs/training.md, "MFU"); the FLOP count of a step is `metrics.FlopModel`'s, from the real
sequence lengths of its batches.

The peak (`device_peak`):
- a GPU named in `GPU_BF16_DENSE_PEAKS`: its published dense bf16 tensor-core peak (no
  sparsity), from NVIDIA's datasheets; MFU is then comparable across runs and with the literature;
- any other GPU: a bf16 matmul measured on it, marked as an estimate;
- CPU: an fp32 matmul measured with the worker's threads (the job trains fp32 on CPU), marked as
  an estimate. CPUs publish no comparable figure, and their vector peak depends on the
  instruction set and clocks, so the measurement is what a well-shaped matmul reaches there.
An estimated peak is said where MFU is shown: the progress line prints `mfu~` and `(est. peak)`,
the MLflow run carries the tag `sphinxx.mfu_peak`, and the job's summary `mfu_peak_source`.

The same figures reach the operator through the progress record rank 0 overwrites next to the
checkpoints (`ProgressWriter`, sphinxx.schema.progress; docs/operator.md, "Live progress").
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

from sphinxx.schema.progress import ProgressRecord, clock, encode, eta_seconds

# Dense bf16 tensor-core peaks, FLOP/s per GPU, without sparsity (the datasheets print the
# sparse figure, twice these). Matched as substrings of torch.cuda.get_device_name(), first match
# wins: variants come before the bare name ("NVIDIA H100 PCIe" before "H100", which is the SXM
# part, "NVIDIA H100 80GB HBM3").
GPU_BF16_DENSE_PEAKS: tuple[tuple[str, float, str], ...] = (
    # nvidia.com/en-us/data-center/h100/ (datasheet table): H100 NVL 1,671 TFLOPS sparse
    ("H100 NVL", 835e12, "NVIDIA H100 datasheet, H100 NVL: 1,671 TFLOPS bf16 with sparsity / 2"),
    # same table: H100 PCIe 1,513 TFLOPS sparse
    ("H100 PCIe", 756e12, "NVIDIA H100 datasheet, H100 PCIe: 1,513 TFLOPS bf16 with sparsity / 2"),
    # same table: H100 SXM 1,979 TFLOPS sparse
    ("H100", 989e12, "NVIDIA H100 datasheet, H100 SXM: 1,979 TFLOPS bf16 with sparsity / 2"),
    # nvidia.com/en-us/data-center/h200/ (datasheet table): H200 NVL 1,671 TFLOPS sparse
    ("H200 NVL", 835e12, "NVIDIA H200 datasheet, H200 NVL: 1,671 TFLOPS bf16 with sparsity / 2"),
    # same table: H200 SXM 1,979 TFLOPS sparse (the same Hopper die and clocks as H100 SXM)
    ("H200", 989e12, "NVIDIA H200 datasheet, H200 SXM: 1,979 TFLOPS bf16 with sparsity / 2"),
    # nvidia.com/en-us/data-center/a100/ (datasheet table): 312 TFLOPS dense, SXM and PCIe alike
    ("A100", 312e12, "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense (624 with sparsity)"),
    # nvidia.com/en-us/data-center/l40s/ (datasheet): 733 TFLOPS sparse
    ("L40S", 362e12, "NVIDIA L40S datasheet: 733 TFLOPS bf16 with sparsity / 2"),
)


@dataclass(frozen=True)
class Peak:
    """The peak FLOP/s of one worker's device, where it comes from, and whether it is an estimate."""

    flops: float
    source: str
    estimate: bool


def gpu_datasheet_peak(device_name: str) -> Peak | None:
    """The published dense bf16 peak of a GPU named like `torch.cuda.get_device_name()`, if listed."""
    for key, flops, source in GPU_BF16_DENSE_PEAKS:
        if key in device_name:
            return Peak(flops, f"datasheet: {source}", estimate=False)
    return None


def device_peak(device: str, cpu_threads: int | None = None) -> Peak:
    """Peak FLOP/s of a training worker's device (`cpu`, `cuda`, `cuda:1`): datasheet for known
    GPUs, measured (and marked as an estimate) on other GPUs and on CPU."""
    if device.startswith("cuda"):
        import torch  # the module's tables (datasheet peaks) are read by torch-free code too

        name = torch.cuda.get_device_name(torch.device(device))
        known = gpu_datasheet_peak(name)
        if known is not None:
            return known
        flops = measure_matmul_flops(device, "bfloat16")
        return Peak(flops, f"estimate: bf16 matmul measured on {name} (not in the datasheet table)", True)
    flops = measure_matmul_flops("cpu", "float32", threads=cpu_threads)
    threads = f"{cpu_threads} thread{'s' if cpu_threads != 1 else ''}" if cpu_threads else "default threads"
    return Peak(flops, f"estimate: fp32 matmul measured on CPU with {threads}", True)


def measure_matmul_flops(
    device: str, dtype: str, threads: int | None = None, size: int = 512, repeats: int = 8
) -> float:
    """Best-of-N square GEMM FLOP/s on `device` (about 0.1 s on 2 CPU cores; 4096 on a GPU)."""
    import torch  # as in device_peak

    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    gpu = device.startswith("cuda")
    size = 4096 if gpu else size
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    try:
        a = torch.randn(size, size, device=device, dtype=getattr(torch, dtype))
        b = torch.randn(size, size, device=device, dtype=getattr(torch, dtype))
        torch.mm(a, b)  # warm the kernels
        best = float("inf")
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            torch.mm(a, b)
            sync()
            best = min(best, time.perf_counter() - start)
        return 2.0 * size**3 / max(best, 1e-9)
    finally:
        torch.set_num_threads(prev)


def train_flops(active_params: int, n_layers: int, dim: int, lengths: list[int]) -> float:
    """Training FLOPs of a decoder over sequences of these real lengths (PaLM, Chowdhery et al.
    2022, app. B): 6 N per position (fwd + bwd matmuls) + 12 L d T per position of a sequence of
    length T (attention scores and values), i.e. sum over sequences of 6 N T + 12 L d T^2."""
    return sum(6.0 * active_params * t + 12.0 * n_layers * dim * t * t for t in lengths)


@dataclass
class Throughput:
    """Rates over a sliding window of recent steps (resume and compile time age out)."""

    window: int = 20
    _steps: deque = field(default_factory=lambda: deque(maxlen=21))

    def __post_init__(self) -> None:
        self._steps = deque(maxlen=self.window + 1)

    def mark(
        self, step: int, tokens: int, samples: int, now: float | None = None, flops: float = 0.0
    ) -> None:
        """Record that optimizer step `step` finished, having processed tokens/samples (and model
        FLOPs) globally."""
        self._steps.append((now if now is not None else time.perf_counter(), step, tokens, samples, flops))

    def rates(self) -> tuple[float, float, float]:
        """(tokens/s, samples/s, seconds/step) over the window; zeros before two marks."""
        if len(self._steps) < 2:
            return 0.0, 0.0, 0.0
        elapsed = self._elapsed()
        (_, s0, *_), (_, s1, *_) = self._steps[0], self._steps[-1]
        return self._sum(2) / elapsed, self._sum(3) / elapsed, elapsed / max(s1 - s0, 1)

    def flops_per_s(self) -> float:
        """Model FLOP/s over the window (the numerator of MFU); 0 before two marks."""
        return self._sum(4) / self._elapsed() if len(self._steps) >= 2 else 0.0

    def _elapsed(self) -> float:
        return max(self._steps[-1][0] - self._steps[0][0], 1e-9)

    def _sum(self, column: int) -> float:
        # The first entry only anchors the clock; its own work happened before it.
        return sum(item[column] for item in list(self._steps)[1:])


def format_eta(seconds: float) -> str:
    if seconds <= 0 or seconds != seconds:  # nan guard
        return "-"
    return clock(seconds)


@dataclass
class ProgressPrinter:
    """Prints a progress line every `every` steps (and at the last step)."""

    total_steps: int
    every: int
    stream: TextIO = sys.stdout
    mfu_estimate: bool = False  # the peak behind MFU is a measurement (`Peak.estimate`): say so

    def line(self, step: int, metrics: dict[str, float], sec_per_step: float) -> str:
        done = step / self.total_steps * 100 if self.total_steps else 100.0
        parts = [f"[sphinxx] step {step}/{self.total_steps} ({done:.1f}%)"]
        if "loss" in metrics:
            parts.append(f"loss {metrics['loss']:.4f}")
        if "lr" in metrics:
            parts.append(f"lr {metrics['lr']:.2e}")
        rates = []
        if metrics.get("tokens_per_s"):
            rates.append(f"{metrics['tokens_per_s']:,.0f} tok/s")
        if metrics.get("samples_per_s"):
            rates.append(f"{metrics['samples_per_s']:.1f} samples/s")
        if metrics.get("mfu"):
            label = "mfu~" if self.mfu_estimate else "mfu"
            rates.append(
                f"{label} {metrics['mfu'] * 100:.1f}%" + (" (est. peak)" if self.mfu_estimate else "")
            )
        eta = format_eta((self.total_steps - step) * sec_per_step)
        return " ".join(parts) + (" | " + " ".join(rates) if rates else "") + f" | ETA {eta}"

    def maybe_print(self, step: int, metrics: dict[str, float], sec_per_step: float) -> bool:
        if step % self.every and step != self.total_steps:
            return False
        print(self.line(step, metrics, sec_per_step), file=self.stream, flush=True)
        return True


@dataclass
class ProgressWriter:
    """Rank 0's progress record (sphinxx.schema.progress) for the operator's live status.

    Overwrites `<run root>/progress.json` at a logged step once `every_s` seconds passed since
    the last write (0: every logged step), and at every commit and the last step (`force`). A
    failed write is reported once and never stops training: the record is a courtesy.
    """

    store: Any  # a sphinxx.storage.CheckpointStore (write_progress)
    attempt: int
    every_s: float
    mfu_estimate: bool = False
    clock: Any = time.time
    _last: float | None = None
    _warned: bool = False

    def due(self, now: float, force: bool) -> bool:
        return force or self._last is None or now - self._last >= self.every_s

    def record(self, step: int, total: int, metrics: dict[str, float], sec_per_step: float) -> ProgressRecord:
        """The record of this step (pure but for the clock)."""
        mfu = metrics.get("mfu")
        return ProgressRecord(
            run_id=self.store.run_id,
            attempt=self.attempt,
            step=step,
            total_steps=total,
            loss=metrics.get("loss"),
            tokens_per_s=float(metrics.get("tokens_per_s") or 0.0),
            samples_per_s=float(metrics.get("samples_per_s") or 0.0),
            mfu=float(mfu) if mfu else None,
            mfu_estimate=self.mfu_estimate,
            seconds_per_step=sec_per_step,
            eta_seconds=eta_seconds(step, total, sec_per_step),
            tokens_seen=float(metrics.get("tokens_seen") or 0.0),
            time=self.clock(),
        )

    def maybe_write(
        self, step: int, total: int, metrics: dict[str, float], sec_per_step: float, force: bool = False
    ) -> bool:
        """Write the record when due; True when written."""
        now = self.clock()
        if not self.due(now, force):
            return False
        self._last = now
        try:
            self.store.write_progress(encode(self.record(step, total, metrics, sec_per_step)))
        except Exception as err:  # storage hiccups must not stop training; the next write retries
            if not self._warned:
                print(f"[sphinxx] progress record not written (status stays at the last one): {err}",
                      file=sys.stderr, flush=True)  # fmt: skip
                self._warned = True
            return False
        return True
