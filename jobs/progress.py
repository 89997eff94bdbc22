"""Throughput accounting and the progress line a user follows in `ray job logs`.

One line every `log_interval` steps on stdout, from rank 0 only:

    [sphinxx] step 120/1000 (12.0%) loss 2.3412 lr 1.90e-05 | 12,345 tok/s 48.2 samples/s mfu 31.2% | ETA 0:12:34

Throughput counts every position the LLM processes (text, image and skip tokens), which is what
the FLOPs estimate is per. MFU = achieved model FLOPs / peak FLOPs of the workers' devices, with
training FLOPs per token from the PaLM formula (6 N + 12 L d S; Chowdhery et al. 2022, app. B)
plus the frozen encoders' forward cost. On CPU there is no datasheet peak, so the peak is measured
once with a large fp32 matmul: an upper bound a model can approach, good enough to compare runs.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TextIO

# Dense bf16 tensor-core peaks (datasheets, no sparsity), by substring of the device name.
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
}


def train_flops_per_token(
    active_params: int, n_layers: int, dim: int, seq_len: int, frozen_flops_per_token: float = 0.0
) -> float:
    """Training FLOPs per LLM position: 6 N (fwd + bwd matmuls) + 12 L d S (attention scores).

    `active_params` excludes embeddings-as-lookup only in spirit: the lookup is cheap but the
    LM head is a real matmul, so callers pass all decoder params (experts scaled by top_k / E).
    `frozen_flops_per_token` adds forward-only work (frozen vision towers) spread over positions.
    """
    return 6.0 * active_params + 12.0 * n_layers * dim * seq_len + frozen_flops_per_token


def peak_flops_per_device(device_name: str | None = None, cpu_threads: int | None = None) -> float:
    """Peak FLOP/s of one training worker's device: datasheet for known GPUs, measured on CPU."""
    if device_name:
        for key, value in GPU_PEAK_FLOPS.items():
            if key in device_name:
                return value
    return measure_cpu_matmul_flops(cpu_threads)


def measure_cpu_matmul_flops(threads: int | None = None, size: int = 512, repeats: int = 8) -> float:
    """Best-of-N fp32 GEMM FLOP/s with the worker's thread count (about 0.1 s on 2 cores)."""
    import torch

    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)  # warm the kernels
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        return 2.0 * size**3 / max(best, 1e-9)
    finally:
        torch.set_num_threads(prev)


@dataclass
class Throughput:
    """Rates over a sliding window of recent steps (resume and compile time age out)."""

    window: int = 20
    _steps: deque = field(default_factory=lambda: deque(maxlen=21))

    def __post_init__(self) -> None:
        self._steps = deque(maxlen=self.window + 1)

    def mark(self, step: int, tokens: int, samples: int, now: float | None = None) -> None:
        """Record that optimizer step `step` finished, having processed tokens/samples globally."""
        self._steps.append((now if now is not None else time.perf_counter(), step, tokens, samples))

    def rates(self) -> tuple[float, float, float]:
        """(tokens/s, samples/s, seconds/step) over the window; zeros before two marks."""
        if len(self._steps) < 2:
            return 0.0, 0.0, 0.0
        (t0, s0, _, _), (t1, s1, _, _) = self._steps[0], self._steps[-1]
        elapsed = max(t1 - t0, 1e-9)
        # The first entry only anchors the clock; its own work happened before t0.
        tokens = sum(item[2] for item in list(self._steps)[1:])
        samples = sum(item[3] for item in list(self._steps)[1:])
        return tokens / elapsed, samples / elapsed, elapsed / max(s1 - s0, 1)


def format_eta(seconds: float) -> str:
    if seconds <= 0 or seconds != seconds:  # nan guard
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


@dataclass
class ProgressPrinter:
    """Prints a progress line every `every` steps (and at the last step)."""

    total_steps: int
    every: int
    stream: TextIO = sys.stdout

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
            rates.append(f"mfu {metrics['mfu'] * 100:.1f}%")
        eta = format_eta((self.total_steps - step) * sec_per_step)
        return " ".join(parts) + (" | " + " ".join(rates) if rates else "") + f" | ETA {eta}"

    def maybe_print(self, step: int, metrics: dict[str, float], sec_per_step: float) -> bool:
        if step % self.every and step != self.total_steps:
            return False
        print(self.line(step, metrics, sec_per_step), file=self.stream, flush=True)
        return True
