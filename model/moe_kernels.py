"""Expert kernels for the Mixtral MoE layer: SwiGLU over token rows grouped by expert.

Why a separate module: the MoE layer (``moe.py``) owns routing, the load-balancing loss and the
(un)permutation; this module only answers "given rows already grouped by expert, what does each
expert output". Three interchangeable kernels (``moe.md`` section 5):

- ``loop``: one matmul chain per expert segment. Runs anywhere, any dtype (fp64 too); the
  reference the others are tested against.
- ``grouped``: three ``torch.nn.functional.grouped_mm`` calls over the whole routed batch. On CPU it
  needs torch >= 2.9 and 16-byte strides (fp32: dim and ffn_dim multiples of 4; bf16: of 8); on
  CUDA bf16 (CUTLASS path on SM90). No host sync: the offsets stay on the device.
- ``megablocks``: MegaBlocks' ``ParallelDroplessMLP`` (grouped GEMM path), CUDA and bf16 only.
  It does permutation, GEMMs and the weighted combine itself, so the layer calls it on tokens,
  not rows. Imported lazily; never on import of ``sphinxx.model``.

Weights are the MegaBlocks dMoE GLU layout: ``w1``, ``v1``, ``w2`` each ``[E_local * F, H]``,
expert-major, ``w2`` not transposed, so per expert e: ``y = (silu(x W1_e^T) * (x V1_e^T)) W2_e``.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from sphinxx.model.moe import MoEArgs

KERNELS = ("auto", "loop", "grouped", "megablocks")
# moe.md calls the grouped kernel `grouped_mm`; both spellings are accepted.
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
        # Keep the graph connected to every weight so DDP/ZeRO see a (zero) grad for each.
        return rows * 0.0 + 0.0 * (w1.sum() + v1.sum() + w2.sum())
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
    """Grouped-GEMM kernel; same contract as :func:`glu_loop`."""
    num_local = counts.numel()
    # mat_b must be (G, K, N): w1/v1 as transposed views [E, H, F]; w2 [E, F, H] already is.
    w1t = _expert_views(w1, num_local).transpose(1, 2)
    v1t = _expert_views(v1, num_local).transpose(1, 2)
    w2e = _expert_views(w2, num_local)
    offs = torch.cumsum(counts, dim=0).to(torch.int32)
    a = _grouped_mm(rows, w1t, offs)
    b = _grouped_mm(rows, v1t, offs)
    h = F.silu(a) * b
    return _ContiguousGrad.apply(_grouped_mm(h, w2e, offs))


def _grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    fn = getattr(F, "grouped_mm", None) or torch._grouped_mm  # public since torch 2.10
    return fn(a, b, offs=offs)


def grouped_supported(dtype: torch.dtype, device: torch.device, dim: int, ffn_dim: int) -> bool:
    """Whether ``glu_grouped`` runs for these shapes (``moe.md`` section 5)."""
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
    try:
        import grouped_gemm  # noqa: F401
        import megablocks  # noqa: F401
        import megablocks.layers.dmoe  # noqa: F401
    except (ImportError, RuntimeError) as e:  # deliberate boundary: any import-time failure
        return f"{type(e).__name__}: {e}"
    return None


def require_megablocks() -> None:
    err = megablocks_import_error()
    if err is not None:
        raise ImportError(f"kernel='megablocks' unavailable ({err}). {MEGABLOCKS_INSTALL_HINT}")


def resolve_kernel(requested: str, x: torch.Tensor, args: MoEArgs, ep_attached: bool) -> str:
    """Pick the kernel for this call.

    ``auto``: MegaBlocks on CUDA with bf16 activations when it imports and no EP group of ours is
    attached (its EP mode is unverified, ours is tested); else ``grouped`` where it runs; else
    ``loop`` (with a warning, e.g. fp64 or unaligned sizes on CPU).
    """
    kernel = canonical_kernel(requested)
    if kernel == "auto":
        if (
            x.device.type == "cuda"
            and x.dtype == torch.bfloat16
            and not ep_attached
            and megablocks_import_error() is None
        ):
            return "megablocks"
        if grouped_supported(x.dtype, x.device, args.dim, args.ffn_dim):
            return "grouped"
        warnings.warn(
            f"MoE kernel 'auto': grouped_mm cannot run for dtype {x.dtype} on {x.device.type} with "
            f"dim={args.dim}, ffn_dim={args.ffn_dim}; using the slow 'loop' kernel",
            stacklevel=3,
        )
        return "loop"
    if kernel == "grouped" and not grouped_supported(x.dtype, x.device, args.dim, args.ffn_dim):
        raise ValueError(
            f"kernel='grouped' needs torch.nn.functional.grouped_mm support: fp32/bf16 on CPU with dim and "
            f"ffn_dim multiples of 16 bytes / element size, or bf16 on CUDA SM80+; got {x.dtype} on "
            f"{x.device.type}, dim={args.dim}, ffn_dim={args.ffn_dim}. Use kernel='loop' or 'auto'."
        )
    if kernel == "megablocks":
        require_megablocks()
    return kernel


def build_megablocks_experts(
    args: MoEArgs,
    w1: torch.nn.Parameter,
    v1: torch.nn.Parameter,
    w2: torch.nn.Parameter,
    ep_group: Any | None,
) -> torch.nn.Module:
    """A MegaBlocks ``ParallelDroplessMLP`` that computes with *our* Parameters.

    Settings follow ``moe.md`` section 5: GLU, grouped GEMMs (the sparse path needs triton < 3.2),
    no bias, silu, Mixtral's L1 renormalisation done by our router, ``moe_loss_weight=0`` (we own the
    aux loss; with 0 MegaBlocks stores nothing globally), bf16, built on the meta device and then
    pointed at our tensors, so the state dict and the optimizer see only ``experts.mlp.*`` of the MoE.
    With ``ep_group`` it runs MegaBlocks' own EP mode [U: untested until a multi-GPU machine].
    """
    require_megablocks()
    from megablocks.layers.arguments import Arguments
    from megablocks.layers.dmoe import ParallelDroplessMLP

    mb_args = Arguments(
        hidden_size=args.dim,
        ffn_hidden_size=args.ffn_dim,
        num_layers=args.num_layers,
        bias=False,
        return_bias=False,
        activation_fn=F.silu,
        moe_num_experts=args.num_experts,
        moe_top_k=args.top_k,
        moe_normalize_expert_weights=1,
        moe_loss_weight=0.0,
        moe_expert_model_parallelism=ep_group is not None,
        expert_parallel_group=ep_group,
        memory_optimized_mlp=True,
        mlp_type="glu",
        mlp_impl="grouped",
        fp16=False,
        bf16=True,
        device="meta",
    )
    mlp = ParallelDroplessMLP(mb_args)
    for name, ours in (("w1", w1), ("v1", v1), ("w2", w2)):
        theirs = getattr(mlp.mlp, name)
        if tuple(theirs.shape) != tuple(ours.shape):
            raise ValueError(
                f"MegaBlocks expects {name} of shape {tuple(theirs.shape)} for this EP layout, ours is "
                f"{tuple(ours.shape)}: ep_size of MoEArgs and the attached group disagree"
            )
        setattr(mlp.mlp, name, ours)  # share, do not copy
    # MegaBlocks scales expert grads by 1/EP in its EP mode and expects a plain mean over eDP
    # afterwards; DeepSpeed (>= PR #6546) already divides expert grads by the full DP size, so
    # we switch the scaling off (= "multiply by EP", moe.md section 6).
    mlp.mlp.gradient_scale = None
    return mlp
