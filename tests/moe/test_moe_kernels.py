"""Which expert kernel runs, for every device / dtype / EP / MegaBlocks / request combination (no CUDA).

The choice is the pure ``moe_kernels.select_kernel`` of a ``KernelFacts``; ``resolve_kernel`` only
gathers the facts from the activations. So the whole table is checked here on CPU, including the
CUDA rows, and ``_expected`` below is the rule written out once more, as the issue states it.
"""

from __future__ import annotations

import itertools
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from sphinxx.model import moe_kernels
from sphinxx.model.moe_kernels import KernelFacts, select_kernel
from tests.moe._helpers import F, H

ROOT = Path(__file__).resolve().parents[2]
MISSING = "ImportError: No module named 'megablocks'"
DEVICES = ("cuda", "cpu")
DTYPES = (torch.bfloat16, torch.float32, torch.float64)
REQUESTS = ("auto", "loop", "grouped", "grouped_mm", "megablocks")


def _grouped_ok(device: str, dtype: torch.dtype, aligned: bool) -> bool:
    # What grouped_supported answers: bf16 on CUDA SM80+; fp32/bf16 on CPU with 16-byte strides.
    if device == "cuda":
        return dtype == torch.bfloat16
    return dtype in (torch.float32, torch.bfloat16) and aligned


def _expected(requested: str, device: str, dtype: torch.dtype, mb_present: bool, grouped_ok: bool):
    """(kernel, warns) or the exception type. EP plays no part: every kernel runs behind our dispatcher."""
    cuda_bf16 = device == "cuda" and dtype == torch.bfloat16
    if requested == "auto":
        if cuda_bf16 and mb_present:
            return "megablocks", False
        return ("grouped", False) if grouped_ok else ("loop", True)
    if requested == "loop":
        return "loop", False
    if requested in ("grouped", "grouped_mm"):
        return ("grouped", False) if grouped_ok else ValueError
    if not mb_present:
        return ImportError
    return ("megablocks", False) if cuda_bf16 else ValueError


CASES = [
    (req, dev, dt, ep, mb, aligned)
    for req, dev, dt, ep, mb, aligned in itertools.product(
        REQUESTS, DEVICES, DTYPES, (False, True), (True, False), (True, False)
    )
    if dev == "cpu" or aligned  # alignment only matters on CPU
]


@pytest.mark.parametrize(
    "requested, device, dtype, ep_attached, mb_present, aligned",
    CASES,
    ids=[
        f"{r}-{d}-{str(t).removeprefix('torch.')}-{'ep' if e else 'noep'}-{'mb' if m else 'nomb'}"
        f"{'' if a else '-unaligned'}"
        for r, d, t, e, m, a in CASES
    ],
)
def test_kernel_choice_table(requested, device, dtype, ep_attached, mb_present, aligned) -> None:
    facts = KernelFacts(
        device_type=device,
        dtype=dtype,
        ep_attached=ep_attached,
        grouped_ok=_grouped_ok(device, dtype, aligned),
        megablocks_error=None if mb_present else MISSING,
    )
    expected = _expected(requested, device, dtype, mb_present, facts.grouped_ok)
    if isinstance(expected, type):
        with pytest.raises(expected):
            select_kernel(requested, facts)
        return
    kernel, warning = select_kernel(requested, facts)
    assert (kernel, warning is not None) == expected
    if warning:
        assert "'loop' kernel" in warning


def test_auto_is_megablocks_on_cuda_bf16_with_and_without_ep() -> None:
    for ep in (False, True):
        facts = KernelFacts("cuda", torch.bfloat16, ep, grouped_ok=True, megablocks_error=None)
        assert select_kernel("auto", facts) == ("megablocks", None)
        missing = KernelFacts("cuda", torch.bfloat16, ep, grouped_ok=True, megablocks_error=MISSING)
        assert select_kernel("auto", missing) == ("grouped", None)


def test_megablocks_requested_but_absent_names_the_extra_and_the_install_command() -> None:
    facts = KernelFacts("cuda", torch.bfloat16, True, grouped_ok=True, megablocks_error=MISSING)
    with pytest.raises(ImportError) as err:
        select_kernel("megablocks", facts)
    message = str(err.value)
    assert MISSING in message  # the reason
    assert "sphinxx[gpu]" in message  # the extra
    assert "pip install --no-deps --no-build-isolation megablocks==0.10.0" in message
    assert "stanford-stk==0.7.1" in message and "grouped_gemm==0.3.0" in message
    assert "kernel='grouped'" in message  # the way out without MegaBlocks


def test_megablocks_on_non_bf16_or_cpu_tensors_is_a_user_error() -> None:
    for device, dtype in (("cuda", torch.float32), ("cpu", torch.bfloat16)):
        facts = KernelFacts(device, dtype, False, grouped_ok=True, megablocks_error=None)
        with pytest.raises(ValueError, match="bf16 CUDA tensors"):
            select_kernel("megablocks", facts)


def test_resolve_kernel_reads_the_facts_from_cpu_activations() -> None:
    from sphinxx.model.moe import MoEArgs

    args = MoEArgs(H, F)
    x32 = torch.randn(4, H)
    for ep in (False, True):
        assert moe_kernels.resolve_kernel("auto", x32, args, ep) == "grouped"
        assert moe_kernels.resolve_kernel("auto", x32.bfloat16(), args, ep) == "grouped"
    with pytest.warns(UserWarning, match=r"'loop' kernel \(dim=64, ffn_dim=128\)"):
        assert moe_kernels.resolve_kernel("auto", x32.double(), args, False) == "loop"
    unaligned = MoEArgs(H + 2, F)
    with pytest.warns(UserWarning, match="'loop' kernel"):
        assert moe_kernels.resolve_kernel("auto", torch.randn(4, H + 2), unaligned, True) == "loop"


def test_glu_megablocks_without_megablocks_raises_the_hint() -> None:
    rows, counts = torch.randn(3, H), torch.tensor([3] + [0] * 7)
    w = torch.randn(8 * F, H)
    with pytest.raises(ImportError, match=r"sphinxx\[gpu\]"):
        moe_kernels.glu_megablocks(rows, counts, w, w, w)
    # No rows at all (an EP rank that received nothing): no GEMM library is needed.
    empty = moe_kernels.glu_megablocks(rows[:0], torch.zeros(8, dtype=torch.long), w, w, w)
    assert empty.shape == (0, H)


def test_family_sweep_mixtral_point_resolves_to_megablocks_under_ep_on_gpu() -> None:
    """The Mixtral point of examples/sweeps/sphinx-x-family.yaml, resolved as the job resolves it."""
    from sphinxx.schema.admission import admit_run
    from sphinxx.schema.run import run_decoder_args
    from sphinxx.sweep import points as expand

    sweep = yaml.safe_load((ROOT / "examples" / "sweeps" / "sphinx-x-family.yaml").read_text())
    name, raw = sweep["metadata"]["name"], sweep["spec"]
    spec = expand.admit_sweep(name, raw).spec
    point = next(p for p in expand.points(name, spec) if p.model == "mixtral-8x7b")
    cfg = admit_run(point.name, expand.point_spec(raw, point)).config
    args = run_decoder_args(cfg)
    assert (args.moe_kernel, args.ep_size, cfg.train.precision) == ("auto", 8, "bf16")
    facts = KernelFacts(
        device_type="cuda",
        dtype=torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32,
        ep_attached=args.ep_size > 1,
        grouped_ok=True,
        megablocks_error=None,  # a GPU image with MegaBlocks built (bench/gpu_setup.sh)
    )
    assert select_kernel(args.moe_kernel, facts) == ("megablocks", None)


# --- glu_megablocks' calling convention, against a stand-in for the two APIs it calls --------------
#
# MegaBlocks cannot import without CUDA, so these tests replace `grouped_gemm.ops.gmm` and
# `megablocks.layers.glu.memory_optimized_grouped_glu` (0.10.0) by torch stand-ins that check
# what the real ones require (read in their source: contiguous 2-D input, 3-D [E, F, H] weights,
# int64 group sizes on the host; a backward that refuses unless x, w1 and v1 need grads and writes
# dx into the incoming grad's memory) and compute the same function. The numbers on the real
# kernels are bench/gpu_moe_local.py's job.


def _check_gmm_args(a: torch.Tensor, b: torch.Tensor, batch_sizes: torch.Tensor) -> list[int]:
    assert a.dim() == 2 and a.is_contiguous(), "grouped_gemm wants a contiguous [tokens, k] input"
    assert b.dim() == 3 and b.is_contiguous(), "grouped_gemm wants contiguous [experts, n, k] weights"
    assert batch_sizes.device.type == "cpu" and batch_sizes.dtype == torch.int64, "host int64 sizes"
    assert batch_sizes.numel() == b.shape[0] and int(batch_sizes.sum()) == a.shape[0]
    return batch_sizes.tolist()


def _fake_gmm(a, b, batch_sizes, trans_b=False):
    sizes = _check_gmm_args(a, b, batch_sizes)
    parts = [seg @ (b[g].t() if trans_b else b[g]) for g, seg in enumerate(a.split(sizes))]
    return torch.cat(parts)


def _glu(x, w1, v1, w2, batch_sizes, act):
    return _fake_gmm(
        act(_fake_gmm(x, w1, batch_sizes, True)) * _fake_gmm(x, v1, batch_sizes, True), w2, batch_sizes
    )


class _FakeMemoryOptimizedGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, v1, w2, batch_sizes, act):
        ctx.save_for_backward(x, w1, v1, w2)
        ctx.batch_sizes, ctx.act = batch_sizes, act
        return _glu(x, w1, v1, w2, batch_sizes, act)

    @staticmethod
    def backward(ctx, ddsd_out):
        if not all(ctx.needs_input_grad[:3]):
            raise ValueError("Expected all MLP inputs to need grad.")
        assert ddsd_out.is_contiguous()
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in ctx.saved_tensors]
            y = _glu(*leaves, ctx.batch_sizes, ctx.act)
            dx, dw1, dv1, dw2 = torch.autograd.grad(y, leaves, ddsd_out)
        ddsd_out.copy_(dx)  # as the real one: dx lands in the incoming grad's memory
        return ddsd_out, dw1, dv1, dw2, None, None


@pytest.fixture
def fake_megablocks(monkeypatch):
    gg = types.ModuleType("grouped_gemm")
    gg.ops = types.SimpleNamespace(gmm=_fake_gmm)
    glu = types.ModuleType("megablocks.layers.glu")
    glu.memory_optimized_grouped_glu = _FakeMemoryOptimizedGLU.apply
    layers = types.ModuleType("megablocks.layers")
    layers.glu = glu
    mb = types.ModuleType("megablocks")
    mb.layers = layers
    for name, mod in (("grouped_gemm", gg), ("megablocks", mb), ("megablocks.layers", layers),
                      ("megablocks.layers.glu", glu)):  # fmt: skip
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(moe_kernels, "megablocks_import_error", lambda: None)


def _glu_case(counts: list[int], seed: int, frozen_x: bool = False):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(sum(counts), H, generator=gen).requires_grad_(not frozen_x)
    weights = [(torch.randn(len(counts) * F, H, generator=gen) * 0.1).requires_grad_() for _ in range(3)]
    return rows, torch.tensor(counts), weights


@pytest.mark.parametrize("frozen_x", [False, True], ids=["train", "frozen-input"])
@pytest.mark.parametrize("counts", [[5, 0, 17, 3, 0, 9, 1, 12], [0, 0, 40, 0], [0, 0, 0, 0], [7]])
def test_glu_megablocks_calls_megablocks_as_it_expects(fake_megablocks, counts, frozen_x) -> None:
    results = []
    for glu in (moe_kernels.glu_loop, moe_kernels.glu_megablocks):
        rows, cnt, weights = _glu_case(counts, 3, frozen_x)
        out = glu(rows, cnt, *weights)
        grad_out = torch.linspace(-1, 1, out.numel()).view_as(out)
        held = grad_out.clone()
        out.backward(grad_out)
        assert torch.equal(grad_out, held), "the caller's grad tensor was overwritten"
        grads = [] if frozen_x else [rows.grad]
        results.append([out.detach(), *grads, *(w.grad for w in weights)])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ep_size", [1, 2, 4, 8])
def test_glu_megablocks_behind_local_experts(fake_megablocks, ep_size: int) -> None:
    """The EP path's call: rows regrouped by local expert, counts on the device, w1/v1/w2 slices."""
    from sphinxx.model.expert_parallel import local_experts

    gen = torch.Generator().manual_seed(ep_size)
    recv = torch.randint(0, 6, (ep_size, 8 // ep_size), generator=gen)
    recv[0] = 0  # a source that sent nothing
    outs = []
    for glu in (moe_kernels.glu_loop, moe_kernels.glu_megablocks):
        rows, _, weights = _glu_case([int(recv.sum())] + [0] * (8 // ep_size - 1), 4)
        y = local_experts(rows, recv, glu, *weights)
        y.backward(torch.ones_like(y))
        outs.append([y.detach(), rows.grad, *(w.grad for w in weights)])
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
