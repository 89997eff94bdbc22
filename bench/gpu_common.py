"""Helpers shared by the GPU bench scripts (gpu_moe.py, gpu_moe_local.py, gpu_moe_ep.py).

Why a module of its own: the three scripts must print the same JSON, name the device the same way
and find ``sphinxx`` on a GPU machine where the package is not installed (the repo is copied there
and run as ``python3 bench/<script>.py``, which puts ``bench/`` on ``sys.path``).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

PEAK_TFLOPS = 989.0  # H100/H200 SXM dense bf16 (torchtitan get_peak_flops); an estimate elsewhere
ROOT = Path(__file__).resolve().parents[1]


def bootstrap_sphinxx() -> None:
    """Map the repo's folders onto the `sphinxx` namespace when the package is not installed."""
    try:
        import sphinxx.model.moe  # noqa: F401

        return
    except ImportError:
        pass
    for name, folder in (("sphinxx", "sphinxx"), ("sphinxx.model", "model")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(ROOT / folder)]
        sys.modules[name] = mod


def emit(kind: str, **row) -> None:
    print(json.dumps({"kind": kind, **row}), flush=True)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in fp32; 0 for two empty tensors; NaN anywhere gives NaN (never passes)."""
    a, b = a.float(), b.float()
    if b.numel() == 0:
        return 0.0
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"


def env_row(device: str) -> dict:
    """Versions and the device, for the first JSON line of every script."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:
        transformers_version = None
    from sphinxx.model import moe_kernels

    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers_version,
        "triton": triton_version,
        "device": device_name(device),
        "megablocks_error": moe_kernels.megablocks_import_error(),
    }


def poison_cuda_allocator(shapes: list[tuple[int, ...]], dtype: torch.dtype, device: str) -> None:
    """Leave NaN-filled blocks of these sizes in the caching allocator (poisoned outputs).

    A kernel that returns ``torch.empty`` memory it never writes (the zero-token-expert weight grad
    of some grouped GEMMs) then hands back NaN instead of a lucky zero.
    """
    if not device.startswith("cuda"):
        return
    blocks = [torch.full(s, float("nan"), dtype=dtype, device=device) for s in shapes]
    del blocks


def fwd_bwd_ms(fn: Callable[[torch.Tensor], torch.Tensor], x, grad, warmup: int, iters: int) -> list[float]:
    """Per-iteration fwd+bwd times in ms (CUDA events on CUDA, perf_counter on CPU)."""
    cuda = x.device.type == "cuda"
    times = []
    for i in range(warmup + iters):
        xi = x.detach().clone().requires_grad_()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        fn(xi).backward(grad)
        if cuda:
            end.record()
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end) if cuda else (time.perf_counter() - t0) * 1e3)
    return times


def moe_fwd_bwd_flops(tokens: int, top_k: int, dim: int, ffn_dim: int) -> float:
    # fwd = 2 * T * k * 3 * H * F (three GEMMs per routed row); fwd+bwd ~ 3x
    # (docs/moe.md, "What was verified where").
    return 3 * 2 * tokens * top_k * 3 * dim * ffn_dim


def interleaved_timing(
    impls: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    x: torch.Tensor,
    grad: torch.Tensor,
    rounds: int,
    warmup: int,
    iters: int,
    before_each: Callable[[str], None] = lambda name: None,
) -> dict[str, dict]:
    """Time every implementation in ``rounds`` rounds, rotating who goes first each round.

    Returns name -> {"per_round_ms": medians per round, "peak_mem_gib"} (peak over its first round).
    """
    names = list(impls)
    out: dict[str, dict] = {n: {"per_round_ms": [], "peak_mem_gib": None} for n in names}
    cuda = x.device.type == "cuda"
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            before_each(name)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times = fwd_bwd_ms(impls[name], x, grad, warmup if r == 0 else 1, iters)
            out[name]["per_round_ms"].append(statistics.median(times))
            if cuda and r == 0:
                out[name]["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out
