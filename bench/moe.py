"""CPU benchmark: our MoE kernels vs transformers' MixtralSparseMoeBlock and vs the dense-GEMM roofline.

Run:  .venv/bin/python bench/moe.py [--dim 256 --ffn-dim 512 --tokens 256 1024 4096 --rounds 4 --iters 5
                                     --threads 1 --clock cpu --with-torch-grouped-mm]

Interleaved and repeated, at the level of single calls: after one warm-up call of each,
``--rounds`` rounds of ``--iters`` steps; in each step every implementation runs one timed fwd+bwd
call, in an order that rotates from round to round, so no side always runs first and a burst of
load from other processes hits neighbouring calls of all sides alike. Before each layer call the
parameters' grads are set to None (what ``optimizer.zero_grad()`` does), so no call pays for
accumulating into the previous call's grads, and backward starts from ``out.backward(grad)``.

The roofline: the expert FLOPs of one layer call, fwd+bwd, done as dense GEMMs on this CPU with
the same dtype and threads. One layer call on T tokens routes N = T x top_k rows; each row goes
through 3 GEMMs forward (x W1^T, x V1^T, h W2) and 6 backward (dh, dW2, dx twice, dW1, dV1), each
2 N H F FLOPs: ``roofline`` times exactly those 9 GEMMs ([N, H] x [H, F] and alike) as plain
``torch.mm`` calls on N rows with one expert's weight shapes, written into preallocated outputs:
the same FLOPs with no routing, no grouping, no elementwise work and no allocation (a fresh
output can page-fault, which is not GEMM time). (The router's GEMMs, 2 T H E per pass, are left
out: E << F.) ``expert-gemms`` times the same 9 GEMMs per expert on that expert's rows, with the
routing the layer gives these tokens and the layer's own weights, also into preallocated
outputs: the most any kernel that runs one GEMM per expert can reach; what separates a kernel
from it is its non-GEMM work (elementwise, gather, combine, router, allocation).
``expert-elementwise`` times the SwiGLU elementwise work the segment kernel does per expert (6
passes over [rows, F]: silu and the product forward; backward the product again, two products
and silu's backward), and ``expert_gemms_and_elementwise_of_roofline`` in the ratio line
is roofline / (expert GEMMs + that elementwise work) per step: the most such a kernel can reach
before any routing, gather or combine. ``routing`` times the layer's router alone (router GEMM,
softmax, top-k, renormalisation, load-balancing loss and the sort by expert, fwd+bwd), and
``expert_gemms_elementwise_and_routing_of_roofline`` adds it to the two: what is left between that
and a layer is its gather, weighted combine, allocations and autograd graph.

JSON lines: one per implementation and token count (median and min over all its calls, its
per-round medians, GFLOP/s on the expert FLOPs, the median minor page faults per call (fresh
memory that glibc had returned to the OS is faulted in on first touch, a cost of the allocator
that lands on whoever touches it) and the max abs difference of the outputs against
transformers, so a fast wrong kernel shows), then one ``ratio`` line per token count: for
each implementation, ``<name>_of_roofline`` (``grouped_of_roofline``, ``expert_gemms_of_roofline``,
``transformers_eager_of_roofline``, ...), the median over steps of (roofline time / its time) within
the same step (1.0: at the dense-GEMM limit), and for each of ours and transformers'
grouped_mm, ``transformers_over_<name>``, the median of (transformers eager time / its time) (> 1:
faster than transformers); each with the 25th and 75th percentiles and the ratio of the two minima.
``<ours>_of_expert_gemms`` is the same ratio against ``expert-gemms`` (1.0: no time beyond the
expert GEMMs).

``--malloc-keep`` has glibc's malloc keep freed memory (:func:`keep_freed_memory`), so that no
call pays for faulting in memory a previous call gave back to the OS; without it the page faults
land wherever the allocator's history puts them (``page_faults_per_call`` shows where).
``--clock cpu`` times with the process's CPU time instead of the wall clock: with ``--threads 1``
on a shared, oversubscribed machine it leaves out the time the process waits for a core (not
meaningful with several threads, whose spin-waits count). ``--with-torch-grouped-mm`` also times
our layer with torch's ``grouped_mm`` as the grouped kernel (the CPU path before the segment
kernel; what CUDA still runs). Timings are noisy on shared 2-core machines: compare ratios from
the same run only.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import resource
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from sphinxx.model import moe_kernels
from sphinxx.model.moe import MoE, MoEArgs, load_balancing_loss
from sphinxx.model.moe_convert import mixtral_experts_from_hf


def build(dim: int, ffn_dim: int, experts: int, top_k: int, impl: str) -> tuple[torch.nn.Module, MoE]:
    cfg = MixtralConfig(
        hidden_size=dim, intermediate_size=ffn_dim, num_local_experts=experts, num_experts_per_tok=top_k
    )
    cfg._experts_implementation = impl
    hf = MixtralSparseMoeBlock(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.02)
    ours = MoE(MoEArgs(dim, ffn_dim, num_experts=experts, top_k=top_k))
    state = {f"l.mlp.{k}": v for k, v in hf.state_dict().items()}
    ours.load_state_dict(mixtral_experts_from_hf(state, "l.", experts))
    return hf, ours


def fwd_bwd(fn, params: list[torch.nn.Parameter], x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """One fwd+bwd call of a layer, its parameters' grads reset first (module docstring); its output."""
    for p in params:
        p.grad = None
    xi = x.clone().requires_grad_()
    out = fn(xi)
    out.backward(grad)
    return out.detach()


def _gemms(x: torch.Tensor, dy: torch.Tensor, a: torch.Tensor, h: torch.Tensor, w: tuple[torch.Tensor, ...],
           out: tuple[torch.Tensor, ...]) -> None:  # fmt: skip
    """The 9 GEMMs of one expert (module docstring) on its rows x, dy [n, H] and a, h [n, F], weights
    w = (W1, V1, W2) [F, H], into out = ([n, F], [n, H], [F, H], [F, H], [F, H])."""
    o_f, o_h, d1, d2, d3 = out
    torch.mm(x, w[0].t(), out=o_f), torch.mm(x, w[1].t(), out=o_f), torch.mm(h, w[2], out=o_h)  # forward
    torch.mm(dy, w[2].t(), out=o_f), torch.mm(h.t(), dy, out=d3)  # backward of the down projection: dh, dW2
    torch.mm(a, w[0], out=o_h), torch.mm(a, w[1], out=o_h)  # dx: through the gate, then the up projection
    torch.mm(a.t(), x, out=d1), torch.mm(a.t(), x, out=d2)  # dW1, dV1


def _operands(
    rows: int, dim: int, ffn_dim: int, gen: torch.Generator
) -> tuple[tuple[torch.Tensor, ...], ...]:
    """Random x, dy [rows, H], a, h [rows, F] and the outputs of :func:`_gemms` on them."""
    x, dy = (torch.randn(rows, dim, generator=gen) for _ in range(2))
    a, h = (torch.randn(rows, ffn_dim, generator=gen) for _ in range(2))
    out = (a.new_empty(rows, ffn_dim), x.new_empty(rows, dim), *(x.new_empty(ffn_dim, dim) for _ in range(3)))
    return (x, dy, a, h), out


def roofline_gemms(rows: int, dim: int, ffn_dim: int, gen: torch.Generator) -> Callable[[], None]:
    """The 9 dense GEMMs of one layer call's expert FLOPs (module docstring), on ``rows`` = T x top_k rows."""
    operands, out = _operands(rows, dim, ffn_dim, gen)
    w = (torch.randn(ffn_dim, dim, generator=gen),) * 3  # one expert's [F, H] block (W1, V1 and W2 alike)
    return lambda: _gemms(*operands, w, out)


PARTS = ("roofline", "expert-gemms", "expert-elementwise", "routing")  # timed pieces of work, not layers


def _routed_segments(layer: MoE, x: torch.Tensor) -> list[tuple[int, int, int]]:
    """(expert, first row, end row) of each expert with rows, as the layer routes ``x``."""
    with torch.no_grad():
        ids = layer.router(x.reshape(-1, x.shape[-1]))[3]
    counts = torch.bincount(ids.reshape(-1), minlength=layer.args.num_experts).tolist()
    return [(e, sum(counts[:e]), sum(counts[: e + 1])) for e in range(len(counts)) if counts[e]]


def expert_gemms(layer: MoE, x: torch.Tensor, gen: torch.Generator) -> Callable[[], None]:
    """The same 9 GEMMs per expert on the rows the layer routes to it for ``x``, with its weights."""
    segs = _routed_segments(layer, x)
    mlp = layer.experts.mlp
    weights = [
        w.detach().view(layer.args.num_local_experts, -1, w.shape[-1]) for w in (mlp.w1, mlp.v1, mlp.w2)
    ]
    (x_all, dy, a, h), out = _operands(segs[-1][2], layer.args.dim, layer.args.ffn_dim, gen)

    def gemms() -> None:
        for e, lo, hi in segs:
            rows_out = (out[0][: hi - lo], out[1][: hi - lo], *out[2:])
            _gemms(x_all[lo:hi], dy[lo:hi], a[lo:hi], h[lo:hi], tuple(w[e] for w in weights), rows_out)

    return gemms


def expert_elementwise(layer: MoE, x: torch.Tensor, gen: torch.Generator) -> Callable[[], None]:
    """The SwiGLU elementwise work of one layer call per expert, on the rows the layer routes for ``x``:
    forward silu(a) and its product with b; backward that product again (h is recomputed), dh silu(a),
    dh b and silu's backward: 6 passes over [rows, F], the segment kernel's own ops, into
    preallocated outputs."""
    segs = _routed_segments(layer, x)
    (_, _, a, b), _ = _operands(segs[-1][2], layer.args.dim, layer.args.ffn_dim, gen)
    act, dh = a.new_empty(a.shape), torch.randn(a.shape, generator=gen)  # silu(a) is saved, dh a GEMM's
    h, db, t, da = (a.new_empty(max(hi - lo for _, lo, hi in segs), a.shape[1]) for _ in range(4))  # scratch
    silu, silu_backward = torch.ops.aten.silu.out, torch.ops.aten.silu_backward.grad_input

    def elementwise() -> None:
        for _, lo, hi in segs:
            n, ae, be, se, dhe = hi - lo, a[lo:hi], b[lo:hi], act[lo:hi], dh[lo:hi]
            torch.mul(silu(ae, out=se), be, out=h[:n])  # forward
            torch.mul(se, be, out=h[:n])  # backward: h again, then the grads of b and of a
            (
                torch.mul(dhe, se, out=db[:n]),
                silu_backward(torch.mul(dhe, be, out=t[:n]), ae, grad_input=da[:n]),
            )

    return elementwise


def routing(layer: MoE, x: torch.Tensor, gen: torch.Generator) -> Callable[[], None]:
    """The layer's routing alone, fwd+bwd: router GEMM, fp32 softmax, top-k and renormalisation, the
    load-balancing loss and the stable sort by expert, backward from a random grad of the weights."""
    tokens = x.reshape(-1, x.shape[-1])
    grad = torch.randn(tokens.shape[0], layer.args.top_k, generator=gen)

    def route() -> None:
        layer.router.layer.weight.grad = None
        _, probs, weights, ids = layer.router(tokens.detach().requires_grad_())
        aux, _ = load_balancing_loss(probs, ids, layer.args.num_experts)
        torch.argsort(ids.reshape(-1), stable=True)
        ((weights * grad).sum() + layer.args.aux_loss_coef * aux).backward()

    return route


def clock(kind: str) -> Callable[[], float]:
    return time.process_time if kind == "cpu" else time.perf_counter


def quantile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=4, method="inclusive")[int(q * 4) - 1]
        if len(values) > 1
        else values[0]
    )


def impls(a: argparse.Namespace) -> tuple[dict, MoE]:
    """name -> (callable on x, its parameters), all on the same weights; and our grouped layer."""
    hf, ours = build(a.dim, a.ffn_dim, a.experts, a.top_k, "eager")
    out = {"transformers-eager": (hf, list(hf.parameters()))}
    try:
        hf_grouped, _ = build(a.dim, a.ffn_dim, a.experts, a.top_k, "grouped_mm")
        hf_grouped.load_state_dict(hf.state_dict())
        out["transformers-grouped_mm"] = (hf_grouped, list(hf_grouped.parameters()))
    except (KeyError, ValueError) as e:  # older transformers without the experts interface
        print(json.dumps({"impl": "transformers-grouped_mm", "skipped": repr(e)}), flush=True)
    layers = {}
    for kernel in ("grouped", "loop"):
        # One MoE per kernel (shared weights): the kernel is part of the module's args.
        layers[kernel] = MoE(MoEArgs(a.dim, a.ffn_dim, num_experts=a.experts, top_k=a.top_k, kernel=kernel))
        layers[kernel].load_state_dict(ours.state_dict())
        out[f"ours-{kernel}"] = (lambda xi, m=layers[kernel]: m(xi)[0], list(layers[kernel].parameters()))
    if a.with_torch_grouped_mm:
        grouped = out["ours-grouped"]
        out["ours-grouped_torch_mm"] = (lambda xi: _with_torch_grouped_mm(grouped[0], xi), grouped[1])
    return out, layers["grouped"]


def _with_torch_grouped_mm(layer_call: Callable, xi: torch.Tensor) -> torch.Tensor:
    """Our grouped layer with torch's grouped_mm as its kernel (the CPU path before the segment kernel)."""
    with mock.patch.dict(moe_kernels.GLU_KERNELS, grouped=moe_kernels.glu_grouped_mm):
        return layer_call(xi)


def run_token_count(a: argparse.Namespace, fns: dict, layer: MoE, tokens: int, common: dict) -> None:
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(1, tokens, a.dim, generator=gen)
    grad = torch.randn(1, tokens, a.dim, generator=gen)
    rows = tokens * a.top_k
    steps: dict[str, Callable[[], object]] = {"roofline": roofline_gemms(rows, a.dim, a.ffn_dim, gen)}
    steps["expert-gemms"] = expert_gemms(layer, x, gen)
    steps["expert-elementwise"] = expert_elementwise(layer, x, gen)
    steps["routing"] = routing(layer, x, gen)
    steps |= {name: (lambda fn=fn, ps=ps: fwd_bwd(fn, ps, x, grad)) for name, (fn, ps) in fns.items()}
    names = list(steps)
    outs = {name: steps[name]() for name in names}  # warm-up, and the outputs
    now = clock(a.clock)
    times: dict[str, list[list[float]]] = {n: [] for n in names}  # [round][step]
    faults: dict[str, list[int]] = {n: [] for n in names}
    for r in range(a.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for n in names:
            times[n].append([])
        for _ in range(a.iters):
            for name in order:
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = now()
                steps[name]()
                times[name][r].append((now() - t0) * 1e3)
                faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    flat = {n: [t for rnd in times[n] for t in rnd] for n in names}
    gflop = 18 * rows * a.dim * a.ffn_dim / 1e9  # 9 GEMMs of 2 N H F FLOPs (module docstring)
    ref = outs["transformers-eager"]
    for name in names:
        row = {**common, "tokens": tokens, "impl": name, "expert_gflop": round(gflop, 4)}
        row |= {"fwd_bwd_ms": round(statistics.median(flat[name]), 3), "min_ms": round(min(flat[name]), 3)}
        row |= {"gflops": round(gflop / statistics.median(flat[name]) * 1e3, 2)}
        row |= {"per_round_ms": [round(statistics.median(rnd), 3) for rnd in times[name]]}
        row["page_faults_per_call"] = statistics.median(faults[name])
        if name not in (*PARTS, "transformers-eager"):
            row["max_abs_diff_vs_transformers"] = (outs[name] - ref).abs().max().item()
        print(json.dumps(row), flush=True)
    ratio = {**common, "tokens": tokens, "impl": "ratio"}
    # The most a layer doing these per-expert GEMMs and this elementwise work can reach, routing aside;
    # then with the routing too: what is left for the gather, the combine and the rest.
    parts = [g + e for g, e in zip(flat["expert-gemms"], flat["expert-elementwise"], strict=True)]
    ratio |= _paired("expert_gemms_and_elementwise_of_roofline", flat["roofline"], parts)
    parts = [p + r for p, r in zip(parts, flat["routing"], strict=True)]
    ratio |= _paired("expert_gemms_elementwise_and_routing_of_roofline", flat["roofline"], parts)
    for name in names[1:]:
        short = name.removeprefix("ours-")  # ours: grouped, loop, ...; theirs keep the transformers_ prefix
        ratio |= _paired(f"{short.replace('-', '_')}_of_roofline", flat["roofline"], flat[name])
        if name != "transformers-eager" and name not in PARTS:
            key = f"transformers_over_{short.removeprefix('transformers-').replace('-', '_')}"
            ratio |= _paired(key, flat["transformers-eager"], flat[name])
        if name.startswith("ours-"):  # how far our layer is from its own GEMMs: its non-GEMM work
            ratio |= _paired(f"{short}_of_expert_gemms", flat["expert-gemms"], flat[name])
    print(json.dumps(ratio), flush=True)


def _paired(key: str, base: list[float], other: list[float]) -> dict:
    """Median over steps of base / other within the same step, its quartiles, and the ratio of the minima."""
    paired = [b / o for b, o in zip(base, other, strict=True)]
    return {
        key: round(statistics.median(paired), 3),
        f"{key}_p25_p75": [round(quantile(paired, 0.25), 3), round(quantile(paired, 0.75), 3)],
        f"{key}_of_minima": round(min(base) / min(other), 3),
    }


def keep_freed_memory() -> None:
    """glibc's malloc keeps freed memory: no trimming of the heap, a fixed 32 MiB mmap threshold.

    By default glibc hands large freed blocks back to the OS (munmap, or trimming the heap top,
    with thresholds that move with the process's history), and the next call's fresh tensors are
    faulted in again page by page; which implementation pays depends on allocation order.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    if not (libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 2**31 - 1)):
        raise SystemExit("--malloc-keep: mallopt failed (it needs glibc)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--ffn-dim", type=int, default=512)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--rounds", type=int, default=4, help="rounds; the order of the implementations rotates")
    ap.add_argument("--iters", type=int, default=5, help="steps per round; one timed call of each per step")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time")
    ap.add_argument(
        "--with-torch-grouped-mm", action="store_true", help="also time torch's grouped_mm kernel"
    )
    ap.add_argument(
        "--malloc-keep", action="store_true", help="glibc keeps freed memory (no page faults from reuse)"
    )
    a = ap.parse_args()
    if a.malloc_keep:
        keep_freed_memory()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    fns, layer = impls(a)
    common = {"dim": a.dim, "ffn_dim": a.ffn_dim, "experts": a.experts, "top_k": a.top_k, "device": "cpu"}
    common |= {"torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": "fp32"}
    common |= {"rounds": a.rounds, "iters": a.iters, "clock": a.clock, "malloc_keep": a.malloc_keep}
    for tokens in a.tokens:
        run_token_count(a, fns, layer, tokens, common)


if __name__ == "__main__":
    main()
