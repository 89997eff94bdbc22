"""Expert kernels for the Mixtral MoE layer: SwiGLU over token rows grouped by expert.

Why a separate module: the MoE layer (``moe.py``) owns routing, the load-balancing loss and the
(un)permutation, and expert parallelism owns the token exchange (``expert_parallel.py``); this
module only answers "given rows already grouped by expert, what does each expert output", and
which kernel answers it. Three interchangeable kernels, one contract
``glu(rows [N, H], counts [E_local], w1, v1, w2) -> [N, H]`` (docs/moe.md, "Expert kernels"):

- ``loop``: one matmul chain per expert segment. Runs anywhere, any dtype (fp64 too); the
  reference the others are tested against.
- ``grouped``: on CUDA, three ``torch.nn.functional.grouped_mm`` calls over the whole routed batch
  (bf16, CUTLASS path on SM90; no host sync: the offsets stay on the device). On CPU, the segment
  kernel ``_SegmentGLU``: per expert, BLAS GEMMs on its contiguous slab of rows and weights, and a
  hand-written backward doing the elementwise work per expert while it is in cache; torch's CPU
  ``grouped_mm`` reached less of the dense-GEMM
  roofline in the same bench run (docs/moe.md, "The grouped kernel on CPU and its roofline").
  Its selection rule is unchanged (torch >= 2.9 and 16-byte strides on CPU: fp32 dim and ffn_dim
  multiples of 4, bf16 of 8).
- ``megablocks``: MegaBlocks 0.10.0's grouped GLU (``megablocks.layers.glu``'s memory-optimized
  grouped GLU: ``grouped_gemm`` GEMMs, silu recomputed in backward, buffers reused), CUDA and bf16
  only, imported lazily; never on import of ``sphinxx.model``.

Which one runs is a pure function of a few facts (:func:`select_kernel`), so every combination is
tested without CUDA. ``auto`` is ``megablocks`` for bf16 activations on CUDA whenever MegaBlocks
imports, with or without EP; else ``grouped`` where it runs; else ``loop`` with a warning.

MegaBlocks under expert parallelism: our dispatcher feeds MegaBlocks' grouped GLU. With EP > 1
each rank receives its experts' rows through ``expert_parallel.dispatch`` and computes them with
the same kernel call as without EP. We do not use MegaBlocks' own expert-model-parallel mode
(``ParallelDroplessMLP`` with ``moe_expert_model_parallelism``), because:

- Load balance: both are dropless with our router's choices, so every expert gets the same rows
  either way. Skewed loads and experts with zero rows are plain group sizes for the grouped GEMM.
- Padding: none. MegaBlocks' grouped path does not pad, and neither does our exchange. (Its
  ``sparse`` path pads every expert to 128-row blocks and fails with triton >= 3.2.)
- Memory: the expert computation is MegaBlocks' own memory-optimized GLU either way. Not building
  MegaBlocks modules spares a second set of expert weights at init (``Arguments()`` materialises
  them on the current CUDA device unless built on meta).
- DeepSpeed ZeRO-1/2 with EP: DeepSpeed reduces expert grads over the expert-data-parallel group
  and divides by the full DP size. That matches our dispatcher, which scales nothing (EP = 2 equals
  EP = 1 over gloo, tests/moe). MegaBlocks' EP mode scales expert grads by 1/EP for Megatron's
  reduction, which we would have to undo through its private ``gradient_scale``. The MoE param
  marks DeepSpeed reads (``allreduce=False``, ``group_name``) sit on our Parameters whatever the kernel.
- Checkpoints: the kernel reads views of our ``experts.mlp.w1/v1/w2`` Parameters
  ([E_local * F, H], expert-major), so the per-rank writer keeps keying experts by global index
  and a restore at another EP size slices them as before (``moe_convert``).
- Verification: one exchange for every kernel, tested over gloo. What a rank computes can be
  checked on one GPU under simulated EP sizes (``expert_parallel.local_experts``,
  ``bench/gpu_moe_local.py``). MegaBlocks' own mode is a second dispatcher testable only on >= 2 GPUs.
- Cost: MegaBlocks' fused permutation kernels (gather/scatter with the weighted combine) are not
  used; ours is torch indexing. ``bench/gpu_moe.py`` times the fused ``dMoE`` module at EP = 1 beside
  ours. grouped_gemm needs the group sizes on the host: one small device-to-host copy per layer,
  as in MegaBlocks' own grouped path.

Weights are the MegaBlocks dMoE GLU layout: ``w1``, ``v1``, ``w2`` each ``[E_local * F, H]``,
expert-major, ``w2`` not transposed, so per expert e: ``y = (silu(x W1_e^T) * (x V1_e^T)) W2_e``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from sphinxx.model.moe import MoEArgs

KERNELS = ("auto", "loop", "grouped", "megablocks")
# docs/moe.md ("Expert kernels") calls the grouped kernel `grouped_mm`; both spellings are accepted.
KERNEL_ALIASES = {"grouped_mm": "grouped"}

MEGABLOCKS_INSTALL_HINT = (
    "MegaBlocks is an optional CUDA-only backend (extra `sphinxx[gpu]`). It pins torch 2.7.0 and builds "
    "CUDA extensions, so install it without dependency resolution on a GPU machine, against the torch "
    "already there: `pip install --no-deps --no-build-isolation megablocks==0.10.0 stanford-stk==0.7.1 "
    "grouped_gemm==0.3.0` (see bench/gpu_setup.sh). Or use kernel='grouped' / 'loop'."
)


def canonical_kernel(name: str) -> str:
    """Validated kernel name (aliases resolved)."""
    name = KERNEL_ALIASES.get(name, name)
    if name not in KERNELS:
        raise ValueError(f"unknown MoE kernel {name!r}; choose one of {KERNELS} (or 'grouped_mm')")
    return name


def _expert_views(w: torch.Tensor, num_local_experts: int) -> torch.Tensor:
    # [E_local * F, H] -> [E_local, F, H]; a view, so gradients land in the flat Parameter.
    return w.view(num_local_experts, -1, w.shape[-1])


def _no_rows(rows: torch.Tensor, w1: torch.Tensor, v1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    # An EP rank can receive no rows at all. Keep the graph connected to every weight so DDP/ZeRO
    # see a (zero) grad for each, and never hand an empty batch to a GEMM library.
    return rows * 0.0 + 0.0 * (w1.sum() + v1.sum() + w2.sum())


def glu_loop(
    rows: torch.Tensor, counts: torch.Tensor, w1: torch.Tensor, v1: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor:
    """Reference kernel: ``rows`` [N, H] grouped by expert, ``counts`` [E_local] rows per expert."""
    num_local = counts.numel()
    w1e, v1e, w2e = (_expert_views(w, num_local) for w in (w1, v1, w2))
    outs = []
    # One host sync for the segment sizes; acceptable for the reference kernel.
    for e, seg in enumerate(rows.split(counts.tolist(), dim=0)):
        if seg.shape[0] == 0:
            continue
        h = F.silu(seg @ w1e[e].t()) * (seg @ v1e[e].t())
        outs.append(h @ w2e[e])
    if not outs:
        return _no_rows(rows, w1, v1, w2)
    return torch.cat(outs, dim=0)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming grad contiguous.

    grouped_mm's backward rejects zero-stride grads (e.g. from ``y.sum().backward()``).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def glu_grouped(
    rows: torch.Tensor, counts: torch.Tensor, w1: torch.Tensor, v1: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor:
    """Grouped kernel; same contract as :func:`glu_loop`.

    On CPU, :class:`_SegmentGLU` (BLAS GEMMs on each expert's contiguous slab, hand-written
    backward); elsewhere torch's ``grouped_mm`` (:func:`glu_grouped_mm`). ``bench/moe.py
    --with-torch-grouped-mm`` times both on CPU beside the dense-GEMM roofline.
    """
    if rows.device.type == "cpu":
        if rows.shape[0] == 0:
            return _no_rows(rows, w1, v1, w2)
        return _SegmentGLU.apply(rows, counts, w1, v1, w2)
    return glu_grouped_mm(rows, counts, w1, v1, w2)


def glu_grouped_mm(
    rows: torch.Tensor, counts: torch.Tensor, w1: torch.Tensor, v1: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor:
    """Three ``grouped_mm`` calls over the whole routed batch (CUDA); same contract as :func:`glu_loop`."""
    num_local = counts.numel()
    # mat_b must be (G, K, N): w1/v1 as transposed views [E, H, F]; w2 [E, F, H] already is.
    w1t = _expert_views(w1, num_local).transpose(1, 2)
    v1t = _expert_views(v1, num_local).transpose(1, 2)
    w2e = _expert_views(w2, num_local)
    offs = torch.cumsum(counts.to(rows.device), dim=0).to(torch.int32)
    a = _grouped_mm(rows, w1t, offs)
    b = _grouped_mm(rows, v1t, offs)
    h = F.silu(a) * b
    return _ContiguousGrad.apply(_grouped_mm(h, w2e, offs))


def _grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    fn = getattr(F, "grouped_mm", None) or torch._grouped_mm  # public since torch 2.10
    return fn(a, b, offs=offs)


def _segments(counts: torch.Tensor) -> list[tuple[int, int, int]]:
    """(expert, first row, end row) of each expert with rows; counts on the host (CPU: no sync)."""
    out, start = [], 0
    for e, n in enumerate(counts.tolist()):
        if n:
            out.append((e, start, start + n))
        start += n
    return out


class _SegmentGLU(torch.autograd.Function):
    """CPU grouped GLU: per expert, plain GEMMs on its contiguous slab of rows, written in place.

    Each expert's rows are one contiguous block of ``rows`` and its weights one contiguous
    [F, H] block of each Parameter, so every GEMM is a dense BLAS call on views (``out=`` slices
    of preallocated buffers; no gather, no cat): forward 3 and backward 6 GEMMs per expert, the
    dense count. The elementwise work runs per expert right after its GEMMs, while the expert's
    [rows, F] block is still in cache. Saved: rows, a = x W1^T, b = x V1^T and silu(a); h is
    recomputed per expert in backward. An expert without rows gets exactly zero weight gradients.
    """

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, counts: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        num_local = counts.numel()
        w1e, v1e, w2e = (_expert_views(w, num_local) for w in weights)
        segs = _segments(counts)
        rows = rows.contiguous()
        a = rows.new_empty(rows.shape[0], w1e.shape[1])
        b, act = torch.empty_like(a), torch.empty_like(a)
        h = a.new_empty(max(hi - lo for _, lo, hi in segs), a.shape[1])  # scratch, one expert at a time
        y = rows.new_empty(rows.shape)
        for e, lo, hi in segs:
            x, he = rows[lo:hi], h[: hi - lo]
            torch.mm(x, w1e[e].t(), out=a[lo:hi])
            torch.mm(x, v1e[e].t(), out=b[lo:hi])
            torch.ops.aten.silu.out(a[lo:hi], out=act[lo:hi])
            torch.mul(act[lo:hi], b[lo:hi], out=he)
            torch.mm(he, w2e[e], out=y[lo:hi])
        ctx.segs, ctx.num_local = segs, num_local
        ctx.save_for_backward(rows, a, b, act, *weights)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, a, b, act, *weights = ctx.saved_tensors
        w1e, v1e, w2e = (_expert_views(w, ctx.num_local) for w in weights)
        need_x, _, need_w1, need_v1, need_w2 = ctx.needs_input_grad
        grad = grad.contiguous()
        dw1, dv1, dw2 = (_zero_idle(w, ctx.segs, ctx.num_local) if n else None
                         for w, n in zip(weights, (need_w1, need_v1, need_w2), strict=True))  # fmt: skip
        dx = rows.new_empty(rows.shape) if need_x else None
        rows_max = max(hi - lo for _, lo, hi in ctx.segs)
        dh, da, db = (a.new_empty(rows_max, a.shape[1]) for _ in range(3))  # scratch per expert
        for e, lo, hi in ctx.segs:
            n, g, x, ae, be, se = hi - lo, grad[lo:hi], rows[lo:hi], a[lo:hi], b[lo:hi], act[lo:hi]
            if dw2 is not None:
                torch.mm(torch.mul(se, be, out=da[:n]).t(), g, out=dw2[e])  # h = silu(a) * b
            torch.mm(g, w2e[e].t(), out=dh[:n])
            torch.mul(dh[:n], se, out=db[:n])  # d/db of silu(a) * b
            torch.ops.aten.silu_backward.grad_input(dh[:n].mul_(be), ae, grad_input=da[:n])
            if dx is not None:
                torch.mm(da[:n], w1e[e], out=dx[lo:hi])
                dx[lo:hi].addmm_(db[:n], v1e[e])
            if dw1 is not None:
                torch.mm(da[:n].t(), x, out=dw1[e])
            if dv1 is not None:
                torch.mm(db[:n].t(), x, out=dv1[e])
        flat = (None if g is None else g.view(-1, g.shape[-1]) for g in (dw1, dv1, dw2))
        return (dx, None, *flat)


def _zero_idle(w: torch.Tensor, segs: list[tuple[int, int, int]], num_local: int) -> torch.Tensor:
    """An uninitialised [E, F, H] gradient for ``w``; the blocks of experts without rows set to zero."""
    g = _expert_views(torch.empty_like(w), num_local)
    busy = {e for e, _, _ in segs}
    for e in range(num_local):
        if e not in busy:
            g[e].zero_()
    return g


def glu_megablocks(
    rows: torch.Tensor, counts: torch.Tensor, w1: torch.Tensor, v1: torch.Tensor, w2: torch.Tensor
) -> torch.Tensor:
    """MegaBlocks' grouped GLU; same contract as :func:`glu_loop`. CUDA, bf16 (grouped_gemm's only dtype)."""
    if rows.shape[0] == 0:
        return _no_rows(rows, w1, v1, w2)
    require_megablocks()
    # lazy: optional, CUDA-only backend (checked by require_megablocks); never on import of sphinxx.model
    import grouped_gemm
    from megablocks.layers.glu import memory_optimized_grouped_glu

    num_local = counts.numel()
    w1e, v1e, w2e = (_expert_views(w, num_local) for w in (w1, v1, w2))
    # grouped_gemm takes the group sizes on the host (int64): one small sync, as in MegaBlocks.
    batch_sizes = counts.to(device="cpu", dtype=torch.int64)
    rows = rows.contiguous()
    need = [t.requires_grad for t in (rows, w1, v1)]
    if torch.is_grad_enabled() and (any(need) or w2.requires_grad) and not all(need):
        # The memory-optimized backward refuses unless x, w1 and v1 all need grads (frozen experts
        # or a frozen input): plain autograd over the same grouped GEMMs.
        gmm = grouped_gemm.ops.gmm
        h = F.silu(gmm(rows, w1e, batch_sizes, trans_b=True)) * gmm(rows, v1e, batch_sizes, trans_b=True)
        return gmm(h, w2e, batch_sizes)
    return _OwnGrad.apply(memory_optimized_grouped_glu(rows, w1e, v1e, w2e, batch_sizes, F.silu))


class _OwnGrad(torch.autograd.Function):
    """Identity whose backward hands on a private, contiguous copy of the incoming grad.

    MegaBlocks' memory-optimized backward writes dx into the incoming grad's memory (and needs it
    contiguous); when our output is the root of backward, that memory is the caller's tensor.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clone(memory_format=torch.contiguous_format)


GLU_KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "loop": glu_loop,
    "grouped": glu_grouped,
    "megablocks": glu_megablocks,
}


def grouped_supported(dtype: torch.dtype, device: torch.device, dim: int, ffn_dim: int) -> bool:
    """Whether ``glu_grouped`` runs for these shapes (docs/moe.md, "Expert kernels")."""
    if not (hasattr(F, "grouped_mm") or hasattr(torch, "_grouped_mm")):
        return False
    if device.type == "cuda":
        # [U] fp32 grouped_mm on CUDA is not relied upon; bf16 is the CUTLASS path (SM80+).
        return dtype == torch.bfloat16 and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
        return False
    per_16_bytes = 128 // torch.finfo(dtype).bits  # elements per 16 bytes: fp32 4, bf16 8
    return dim % per_16_bytes == 0 and ffn_dim % per_16_bytes == 0


@functools.cache
def megablocks_import_error() -> str | None:
    """None if MegaBlocks (with grouped_gemm) imports and CUDA is up, else the reason."""
    if not torch.cuda.is_available():
        return "CUDA is not available (MegaBlocks is CUDA-only)"
    try:  # lazy: the optional CUDA-only backend is probed here, on first use, never at import
        import grouped_gemm  # noqa: F401
        import megablocks  # noqa: F401
        import megablocks.layers.glu  # noqa: F401
    except (ImportError, RuntimeError) as e:  # deliberate boundary: any import-time failure
        return f"{type(e).__name__}: {e}"
    return None


def megablocks_unavailable(reason: str) -> ImportError:
    return ImportError(f"kernel='megablocks' unavailable ({reason}). {MEGABLOCKS_INSTALL_HINT}")


def require_megablocks() -> None:
    err = megablocks_import_error()
    if err is not None:
        raise megablocks_unavailable(err)


@dataclass(frozen=True)
class KernelFacts:
    """What the kernel choice depends on, gathered by :func:`resolve_kernel` (tests build it by hand)."""

    device_type: str  # of the activations: "cuda", "cpu", ...
    dtype: torch.dtype  # of the activations
    ep_attached: bool  # an EP group of size > 1 is attached; every kernel runs behind our dispatcher
    grouped_ok: bool  # grouped_supported(dtype, device, dim, ffn_dim)
    megablocks_error: str | None  # None: MegaBlocks imports (CUDA up); else why not


def select_kernel(requested: str, facts: KernelFacts) -> tuple[str, str | None]:
    """The kernel for ``requested`` under ``facts``, and a warning to emit (or None). Pure.

    ``auto``: ``megablocks`` for bf16 on CUDA when it imports, with or without EP; else ``grouped``
    where it runs; else ``loop`` with a warning (e.g. fp64 or unaligned sizes on CPU). A kernel asked
    for by name is used or refused: ``ValueError`` when it cannot run on these tensors, ``ImportError``
    with the install hint when MegaBlocks is missing.
    """
    kernel = canonical_kernel(requested)
    mb_tensors = facts.device_type == "cuda" and facts.dtype == torch.bfloat16
    if kernel == "auto":
        if mb_tensors and facts.megablocks_error is None:
            return "megablocks", None
        if facts.grouped_ok:
            return "grouped", None
        return "loop", (
            f"MoE kernel 'auto': grouped_mm cannot run for dtype {facts.dtype} on {facts.device_type} "
            "with these dim/ffn_dim; using the slow 'loop' kernel"
        )
    if kernel == "grouped" and not facts.grouped_ok:
        raise ValueError(
            f"kernel='grouped' needs torch.nn.functional.grouped_mm support: fp32/bf16 on CPU with dim and "
            f"ffn_dim multiples of 16 bytes / element size, or bf16 on CUDA SM80+; got {facts.dtype} on "
            f"{facts.device_type}. Use kernel='loop' or 'auto'."
        )
    if kernel == "megablocks":
        if facts.megablocks_error is not None:
            raise megablocks_unavailable(facts.megablocks_error)
        if not mb_tensors:
            raise ValueError(
                f"kernel='megablocks' runs on bf16 CUDA tensors only (grouped_gemm); got {facts.dtype} on "
                f"{facts.device_type}. Use kernel='grouped', 'loop' or 'auto'."
            )
    return kernel, None


def resolve_kernel(requested: str, x: torch.Tensor, args: MoEArgs, ep_attached: bool) -> str:
    """The kernel for this call (:func:`select_kernel` on the facts of ``x``)."""
    kernel = canonical_kernel(requested)
    if x.device.type == "cuda" or kernel == "megablocks":
        mb_error = megablocks_import_error()
    else:  # never import MegaBlocks for CPU activations
        mb_error = f"activations on {x.device.type}; MegaBlocks is CUDA-only"
    facts = KernelFacts(
        device_type=x.device.type,
        dtype=x.dtype,
        ep_attached=ep_attached,
        grouped_ok=grouped_supported(x.dtype, x.device, args.dim, args.ffn_dim),
        megablocks_error=mb_error,
    )
    kernel, warning = select_kernel(kernel, facts)
    if warning:
        warnings.warn(f"{warning} (dim={args.dim}, ffn_dim={args.ffn_dim})", stacklevel=3)
    return kernel
