"""CPU benchmark: our MoE kernels vs transformers' MixtralSparseMoeBlock and vs the dense-GEMM roofline.

Run:  .venv/bin/python bench/moe.py [--dim 256 --ffn-dim 512 --tokens 256 1024 4096 --rounds 4 --iters 5
                                     --threads 1 --clock cpu --with-torch-grouped-mm]

Interleaved and repeated, at the level of single calls: after one warm-up call of each,
``--rounds`` rounds of ``--iters`` steps; in each step every implementation runs one timed fwd+bwd
call, in an order that rotates from round to round, so no side always runs first and a burst of
load from other processes hits neighbouring calls of all sides alike.

The roofline: the expert FLOPs of one layer call, fwd+bwd, done as dense GEMMs on this CPU with
the same dtype and threads. One layer call on T tokens routes N = T x top_k rows; each row goes
through 3 GEMMs forward (x W1^T, x V1^T, h W2) and 6 backward (dh, dW2, dx twice, dW1, dV1), each
2 N H F FLOPs: ``roofline`` times exactly those 9 GEMMs ([N, H] x [H, F] and alike) as plain
``torch.mm`` calls on N rows with one expert's weight shapes, i.e. the same FLOPs with no routing,
no grouping and no elementwise work. (The router's GEMMs, 2 T H E per pass, are left out: E << F.)

JSON lines: one per implementation and token count (median and min over all its calls, its
per-round medians, GFLOP/s on the expert FLOPs, and the max abs difference of the outputs
against transformers, so a fast wrong kernel shows), then one ``ratio`` line per token count: for
each implementation, ``<name>_of_roofline`` (``grouped_of_roofline``,
``transformers_eager_of_roofline``, ...), the median over steps of (roofline time / its time) within
the same step (1.0: at the dense-GEMM limit), and for each of ours and transformers'
grouped_mm, ``transformers_over_<name>``, the median of (transformers eager time / its time) (> 1:
faster than transformers); each with the 25th and 75th percentiles and the ratio of the two minima.

``--clock cpu`` times with the process's CPU time instead of the wall clock: with ``--threads 1``
on a shared, oversubscribed machine it leaves out the time the process waits for a core (not
meaningful with several threads, whose spin-waits count). ``--with-torch-grouped-mm`` also times
our layer with torch's ``grouped_mm`` as the grouped kernel (the CPU path before the segment
kernel; what CUDA still runs). Timings are noisy on shared 2-core machines: compare ratios from
the same run only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from sphinxx.model import moe_kernels
from sphinxx.model.moe import MoE, MoEArgs
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


def fwd_bwd(fn, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """One fwd+bwd call of a layer; its output."""
    xi = x.clone().requires_grad_()
    out = fn(xi)
    (out * grad).sum().backward()
    return out.detach()


def roofline_gemms(rows: int, dim: int, ffn_dim: int, gen: torch.Generator) -> Callable[[], None]:
    """The 9 dense GEMMs of one layer call's expert FLOPs (module docstring), on ``rows`` = T x top_k rows."""
    x, dy = (torch.randn(rows, dim, generator=gen) for _ in range(2))
    a, h = (torch.randn(rows, ffn_dim, generator=gen) for _ in range(2))
    w = torch.randn(ffn_dim, dim, generator=gen)  # one expert's [F, H] block (W1, V1 and W2 alike)

    def gemms() -> None:
        x @ w.t(), x @ w.t(), h @ w  # forward: gate, up, down
        dy @ w.t(), h.t() @ dy  # backward of the down projection: dh, dW2
        a @ w, a @ w, a.t() @ x, a.t() @ x  # backward of gate and up: dx (twice), dW1, dV1

    return gemms


def clock(kind: str) -> Callable[[], float]:
    return time.process_time if kind == "cpu" else time.perf_counter


def quantile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=4, method="inclusive")[int(q * 4) - 1]
        if len(values) > 1
        else values[0]
    )


def impls(a: argparse.Namespace) -> dict:
    """name -> callable on x, all on the same weights."""
    hf, ours = build(a.dim, a.ffn_dim, a.experts, a.top_k, "eager")
    out = {"transformers-eager": hf}
    try:
        hf_grouped, _ = build(a.dim, a.ffn_dim, a.experts, a.top_k, "grouped_mm")
        hf_grouped.load_state_dict(hf.state_dict())
        out["transformers-grouped_mm"] = hf_grouped
    except (KeyError, ValueError) as e:  # older transformers without the experts interface
        print(json.dumps({"impl": "transformers-grouped_mm", "skipped": repr(e)}), flush=True)
    for kernel in ("grouped", "loop"):
        # One MoE per kernel (shared weights): the kernel is part of the module's args.
        twin = MoE(MoEArgs(a.dim, a.ffn_dim, num_experts=a.experts, top_k=a.top_k, kernel=kernel))
        twin.load_state_dict(ours.state_dict())
        out[f"ours-{kernel}"] = lambda xi, m=twin: m(xi)[0]
    if a.with_torch_grouped_mm:
        out["ours-grouped_torch_mm"] = lambda xi, m=out["ours-grouped"]: _with_torch_grouped_mm(m, xi)
    return out


def _with_torch_grouped_mm(layer_call: Callable, xi: torch.Tensor) -> torch.Tensor:
    """Our grouped layer with torch's grouped_mm as its kernel (the CPU path before the segment kernel)."""
    with mock.patch.dict(moe_kernels.GLU_KERNELS, grouped=moe_kernels.glu_grouped_mm):
        return layer_call(xi)


def run_token_count(a: argparse.Namespace, fns: dict, tokens: int, common: dict) -> None:
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(1, tokens, a.dim, generator=gen)
    grad = torch.randn(1, tokens, a.dim, generator=gen)
    rows = tokens * a.top_k
    roofline = roofline_gemms(rows, a.dim, a.ffn_dim, gen)
    steps: dict[str, Callable[[], object]] = {"roofline": roofline}
    steps |= {name: (lambda fn=fn: fwd_bwd(fn, x, grad)) for name, fn in fns.items()}
    names = list(steps)
    outs = {name: steps[name]() for name in names}  # warm-up, and the outputs
    now = clock(a.clock)
    times: dict[str, list[list[float]]] = {n: [] for n in names}  # [round][step]
    for r in range(a.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for n in names:
            times[n].append([])
        for _ in range(a.iters):
            for name in order:
                t0 = now()
                steps[name]()
                times[name][r].append((now() - t0) * 1e3)
    flat = {n: [t for rnd in times[n] for t in rnd] for n in names}
    gflop = 18 * rows * a.dim * a.ffn_dim / 1e9  # 9 GEMMs of 2 N H F FLOPs (module docstring)
    ref = outs["transformers-eager"]
    for name in names:
        row = {**common, "tokens": tokens, "impl": name, "expert_gflop": round(gflop, 4)}
        row |= {"fwd_bwd_ms": round(statistics.median(flat[name]), 3), "min_ms": round(min(flat[name]), 3)}
        row |= {"gflops": round(gflop / statistics.median(flat[name]) * 1e3, 2)}
        row |= {"per_round_ms": [round(statistics.median(rnd), 3) for rnd in times[name]]}
        if name not in ("roofline", "transformers-eager"):
            row["max_abs_diff_vs_transformers"] = (outs[name] - ref).abs().max().item()
        print(json.dumps(row), flush=True)
    ratio = {**common, "tokens": tokens, "impl": "ratio"}
    for name in names[1:]:
        short = name.removeprefix("ours-")  # ours: grouped, loop, ...; theirs keep the transformers_ prefix
        ratio |= _paired(f"{short.replace('-', '_')}_of_roofline", flat["roofline"], flat[name])
        if name != "transformers-eager":
            key = f"transformers_over_{short.removeprefix('transformers-')}"
            ratio |= _paired(key, flat["transformers-eager"], flat[name])
    print(json.dumps(ratio), flush=True)


def _paired(key: str, base: list[float], other: list[float]) -> dict:
    """Median over steps of base / other within the same step, its quartiles, and the ratio of the minima."""
    paired = [b / o for b, o in zip(base, other, strict=True)]
    return {
        key: round(statistics.median(paired), 3),
        f"{key}_p25_p75": [round(quantile(paired, 0.25), 3), round(quantile(paired, 0.75), 3)],
        f"{key}_of_minima": round(min(base) / min(other), 3),
    }


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
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    fns = impls(a)
    common = {"dim": a.dim, "ffn_dim": a.ffn_dim, "experts": a.experts, "top_k": a.top_k, "device": "cpu"}
    common |= {"torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": "fp32"}
    common |= {"rounds": a.rounds, "iters": a.iters, "clock": a.clock}
    for tokens in a.tokens:
        run_token_count(a, fns, tokens, common)


if __name__ == "__main__":
    main()
