"""GPU check of the MoE kernels on a Mixtral-8x7B layer (one H100/H200, bf16, < 2 min).

Run on the GPU machine from the repo root (no install needed; MegaBlocks optional, see
bench/gpu_setup.sh; bench/GPU.md has the one command for all one-GPU checks):

    python3 bench/gpu_moe.py [--tokens 4096] [--iters 10] [--warmup 3]

Smoke test of this script on a CPU machine (tiny shapes, bf16, MegaBlocks rows skipped):

    .venv/bin/python bench/gpu_moe.py --device cpu --tokens 256 --dim 64 --ffn-dim 128 --iters 2 --warmup 1

Prints JSON lines:
- ``env``: versions, device, whether grouped_mm and MegaBlocks are usable (with the import error).
- ``parity``: ``grouped`` and ``megablocks`` vs ``loop`` (same weights, same router, same tokens) and
  transformers' eager ``MixtralSparseMoeBlock`` vs ``loop``: relative L2 error of the output and of
  every grad (x, router, w1, v1, w2), and for transformers the fraction of tokens whose top-k set
  differs. Bounds (docs/moe.md, "What was verified where"): output <= 1e-2, grads <= 2e-2 (bf16 vs bf16).
  ``megablocks-dmoe`` is MegaBlocks' fused ``ParallelDroplessMLP`` (its own permutation kernels and
  weighted combine) driven by our router on our weights: not a path of the model (``moe_kernels``
  says why), only the yardstick for our permutation around MegaBlocks' grouped GLU at EP = 1.
- ``timing``: fwd+bwd ms (CUDA events, median of ``--iters`` after ``--warmup``), TFLOP/s, MFU
  against 989 TFLOP/s (H100/H200 SXM dense bf16), peak memory, for transformers eager,
  transformers grouped_mm (if its experts interface has it), ours loop / grouped / megablocks, and
  megablocks-dmoe. One after the other; bench/gpu_moe_local.py times interleaved rounds.
- ``summary``: speed-ups over transformers eager, and ``ok``. Exit code 1 on a parity failure.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F
from gpu_common import (
    PEAK_TFLOPS,
    bootstrap_sphinxx,
    emit,
    env_row,
    fwd_bwd_ms,
    moe_fwd_bwd_flops,
    rel_l2,
)

OUT_TOL, GRAD_TOL = 1e-2, 2e-2


class MegaBlocksDMoE(torch.nn.Module):
    """MegaBlocks' fused ``ParallelDroplessMLP`` on our router and *our* Parameters (bench only).

    Settings follow docs/moe.md, "Expert kernels": GLU, grouped GEMMs (the sparse path needs triton < 3.2),
    no bias, silu, ``moe_loss_weight=0`` (with 0 MegaBlocks stores nothing globally), bf16, built on
    the meta device and then pointed at our tensors.
    """

    def __init__(self, ours) -> None:
        super().__init__()
        from megablocks.layers.arguments import Arguments
        from megablocks.layers.dmoe import ParallelDroplessMLP

        a = ours.args
        mb_args = Arguments(
            hidden_size=a.dim, ffn_hidden_size=a.ffn_dim, num_layers=1, bias=False, return_bias=False,
            activation_fn=F.silu, moe_num_experts=a.num_experts, moe_top_k=a.top_k,
            moe_normalize_expert_weights=1, moe_loss_weight=0.0, memory_optimized_mlp=True,
            mlp_type="glu", mlp_impl="grouped", fp16=False, bf16=True, device="meta",
        )  # fmt: skip
        self.ours = ours
        self.mlp = ParallelDroplessMLP(mb_args)
        for name in ("w1", "v1", "w2"):
            setattr(self.mlp.mlp, name, getattr(ours.experts.mlp, name))  # share, do not copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        _, _, weights, ids = self.ours.router(tokens)
        return self.mlp(tokens, None, weights.to(x.dtype), ids).view(x.shape)


def build(args: argparse.Namespace):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    from sphinxx.model.moe import MoE, MoEArgs
    from sphinxx.model.moe_convert import mixtral_experts_from_hf

    cfg = MixtralConfig(
        hidden_size=args.dim,
        intermediate_size=args.ffn_dim,
        num_local_experts=args.experts,
        num_experts_per_tok=args.top_k,
    )
    cfg._experts_implementation = "eager"
    with torch.device(args.device):
        hf = MixtralSparseMoeBlock(cfg).to(torch.bfloat16)
        ours = MoE(MoEArgs(args.dim, args.ffn_dim, num_experts=args.experts, top_k=args.top_k, kernel="loop"))
    gen = torch.Generator(device=args.device).manual_seed(0)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn(p.shape, device=args.device, generator=gen) * 0.02)
    state = {f"l.mlp.{k}": v for k, v in hf.state_dict().items()}
    ours.load_state_dict(mixtral_experts_from_hf(state, "l.", args.experts))
    ours.to(torch.bfloat16)
    hf_grouped = None
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

        if "grouped_mm" in ALL_EXPERTS_FUNCTIONS and getattr(hf.experts, "config", None) is not None:
            hf_grouped = hf  # same module and weights, switched by config at call time
    except ImportError:
        pass
    return hf, hf_grouped, ours


def run_once(fn, x: torch.Tensor, grad: torch.Tensor):
    xi = x.detach().clone().requires_grad_()
    y = fn(xi)
    y.backward(grad)
    return y.detach(), xi.grad


def grads_of(ours) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in ours.named_parameters()}


def parity(args, hf, ours, x, grad) -> bool:
    from sphinxx.model.moe_convert import mixtral_experts_from_hf

    ok = True
    ours.zero_grad(set_to_none=True)
    ours.args.kernel = "loop"
    y_ref, gx_ref = run_once(lambda t: ours(t)[0], x, grad)
    g_ref = grads_of(ours)
    for kernel in ("grouped", "megablocks", "megablocks-dmoe"):
        if kernel.startswith("megablocks") and args.megablocks_error:
            emit("parity", impl=f"ours-{kernel}", skipped=args.megablocks_error)
            continue
        ours.zero_grad(set_to_none=True)
        if kernel == "megablocks-dmoe":
            fn = MegaBlocksDMoE(ours)
        else:
            ours.args.kernel = kernel
            fn = lambda t: ours(t)[0]  # noqa: E731
        y, gx = run_once(fn, x, grad)
        errs = {"out": rel_l2(y, y_ref), "x": rel_l2(gx, gx_ref)}
        errs |= {n: rel_l2(g, g_ref[n]) for n, g in grads_of(ours).items()}
        good = errs["out"] <= OUT_TOL and all(v <= GRAD_TOL for k, v in errs.items() if k != "out")
        ok &= good
        emit("parity", impl=f"ours-{kernel}", vs="ours-loop", rel_l2=errs, ok=good)
    # transformers eager vs ours loop: routing and grads of the same weights.
    hf.zero_grad(set_to_none=True)
    y_hf, gx_hf = run_once(hf, x, grad)
    hf_grads = {f"l.mlp.{n}": p.grad for n, p in hf.named_parameters()}
    hf_g = mixtral_experts_from_hf(hf_grads, "l.", args.experts)
    with torch.no_grad():  # HF's routing written out (version-proof): bf16 logits, fp32 softmax, top-k
        tokens = x.reshape(-1, args.dim)
        probs_hf = torch.nn.functional.linear(tokens, hf.gate.weight).float().softmax(-1)
        top_hf = probs_hf.topk(args.top_k, dim=-1).indices.sort(dim=-1).values
        top_ours = ours.router(tokens)[3].sort(dim=-1).values
        topk_diff = (top_hf != top_ours).any(-1).float().mean().item()
    errs = {"out": rel_l2(y_ref, y_hf), "x": rel_l2(gx_ref, gx_hf)}
    errs |= {n: rel_l2(g_ref[n], hf_g[n]) for n in g_ref}
    good = errs["out"] <= OUT_TOL and all(v <= GRAD_TOL for k, v in errs.items() if k != "out")
    ok &= good
    emit(
        "parity", impl="ours-loop", vs="transformers-eager", rel_l2=errs, topk_set_differs=topk_diff, ok=good
    )
    return ok


def _set_hf_experts_impl(hf, mode: str) -> None:
    # transformers >= 5 dispatches the experts forward on config._experts_implementation at call time.
    config = getattr(hf.experts, "config", None)
    if config is not None:
        config._experts_implementation = mode


def time_fwd_bwd(fn, x, grad, args) -> dict:
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = fwd_bwd_ms(fn, x, grad, args.warmup, args.iters)
    ms = statistics.median(times)
    tflops = moe_fwd_bwd_flops(x.shape[0] * x.shape[1], args.top_k, args.dim, args.ffn_dim) / ms / 1e9
    return {
        "fwd_bwd_ms": round(ms, 3),
        "min_ms": round(min(times), 3),
        "tflops": round(tflops, 1),
        "mfu_vs_989": round(tflops / PEAK_TFLOPS, 4),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def timings(args, hf, hf_grouped, ours, x, grad) -> dict[str, float]:
    results = {}
    impls = [("transformers-eager", lambda t: hf(t), "eager")]
    if hf_grouped is not None:
        impls.append(("transformers-grouped_mm", lambda t: hf_grouped(t), "grouped_mm"))
    for kernel in ("loop", "grouped", "megablocks"):
        impls.append((f"ours-{kernel}", lambda t: ours(t)[0], kernel))
    if not args.megablocks_error:
        impls.append(("ours-megablocks-dmoe", MegaBlocksDMoE(ours), "megablocks"))
    for name, fn, mode in impls:
        if name == "ours-megablocks" and args.megablocks_error:
            emit("timing", impl=name, skipped=args.megablocks_error)
            continue
        if name.startswith("transformers"):
            _set_hf_experts_impl(hf, mode)
        else:
            ours.args.kernel = mode
        hf.zero_grad(set_to_none=True)
        ours.zero_grad(set_to_none=True)
        try:
            row = time_fwd_bwd(fn, x, grad, args)
        except Exception as e:  # deliberate boundary: record a backend failure, keep timing the others
            emit("timing", impl=name, error=f"{type(e).__name__}: {e}"[:500])
            continue
        finally:
            _set_hf_experts_impl(hf, "eager")
        results[name] = row["fwd_bwd_ms"]
        emit("timing", impl=name, tokens=x.shape[0] * x.shape[1], **row)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--ffn-dim", type=int, default=14336)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test of this script")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        emit("env", error="CUDA is not available", device="none")
        return 2
    bootstrap_sphinxx()
    from sphinxx.model import moe_kernels

    env = env_row(args.device)
    args.megablocks_error = env["megablocks_error"]
    emit(
        "env",
        **env,
        grouped_mm=moe_kernels.grouped_supported(
            torch.bfloat16, torch.device(args.device), args.dim, args.ffn_dim
        ),
        shape={k: getattr(args, k) for k in ("tokens", "dim", "ffn_dim", "experts", "top_k")},
    )
    torch.manual_seed(0)
    hf, hf_grouped, ours = build(args)
    x = torch.randn(1, args.tokens, args.dim, device=args.device, dtype=torch.bfloat16)
    grad = torch.randn_like(x) * 0.01
    ok = parity(args, hf, ours, x, grad)
    ms = timings(args, hf, hf_grouped, ours, x, grad)
    base = ms.get("transformers-eager")
    speedups = {k: round(base / v, 3) for k, v in ms.items() if base and k != "transformers-eager"}
    emit(
        "summary",
        speedup_over_transformers_eager=speedups,
        parity_ok=ok,
        tol={"out": OUT_TOL, "grad": GRAD_TOL},
        device=env["device"],
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
