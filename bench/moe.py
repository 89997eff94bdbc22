"""CPU benchmark: our MoE kernels vs transformers' MixtralSparseMoeBlock on the same weights and tokens.

Run:  .venv/bin/python bench/moe.py [--dim 256 --ffn-dim 512 --tokens 256 1024 4096 --rounds 5 --iters 5]

Interleaved and repeated, at the level of single calls: after one warm-up call of each,
``--rounds`` rounds of ``--iters`` steps; in each step every implementation runs one timed fwd+bwd
call, in an order that rotates from round to round, so no side always runs first and a burst of
load from other processes hits neighbouring calls of all sides alike.

JSON lines: one per implementation and token count (median and min over all its calls, its
per-round medians, and the max abs difference of the outputs against transformers, so a fast wrong
kernel shows), then one ``ratio`` line per token count: for each of ours, the median over steps of
(transformers eager time / ours) within the same step (> 1: ours is faster), with the 25th and 75th
percentiles, and the ratio of the two minima. Timings are noisy on shared 2-core machines:
compare ratios from the same run only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

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


def fwd_bwd_ms(fn, x: torch.Tensor, grad: torch.Tensor) -> tuple[float, torch.Tensor]:
    """One fwd+bwd call: ms and the output."""
    xi = x.clone().requires_grad_()
    t0 = time.perf_counter()
    out = fn(xi)
    (out * grad).sum().backward()
    return (time.perf_counter() - t0) * 1e3, out.detach()


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
    return out


def run_token_count(a: argparse.Namespace, fns: dict, tokens: int, common: dict) -> None:
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(1, tokens, a.dim, generator=gen)
    grad = torch.randn(1, tokens, a.dim, generator=gen)
    names = list(fns)
    outs = {name: fwd_bwd_ms(fns[name], x, grad)[1] for name in names}  # warm-up, and the outputs
    times: dict[str, list[list[float]]] = {n: [] for n in names}  # [round][step]
    for r in range(a.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for n in names:
            times[n].append([])
        for _ in range(a.iters):
            for name in order:
                times[name][r].append(fwd_bwd_ms(fns[name], x, grad)[0])
    flat = {n: [t for rnd in times[n] for t in rnd] for n in names}
    ref = outs["transformers-eager"]
    for name in names:
        row = {**common, "tokens": tokens, "impl": name}
        row |= {"fwd_bwd_ms": round(statistics.median(flat[name]), 3), "min_ms": round(min(flat[name]), 3)}
        row |= {"per_round_ms": [round(statistics.median(rnd), 3) for rnd in times[name]]}
        if name != "transformers-eager":
            row["max_abs_diff_vs_transformers"] = (outs[name] - ref).abs().max().item()
        print(json.dumps(row), flush=True)
    ratio = {**common, "tokens": tokens, "impl": "ratio"}
    for name in names[1:]:
        key = f"transformers_over_{name.removeprefix('ours-').removeprefix('transformers-')}"
        paired = [e / o for e, o in zip(flat["transformers-eager"], flat[name], strict=True)]
        ratio[key] = round(statistics.median(paired), 3)
        ratio[f"{key}_p25_p75"] = [round(quantile(paired, 0.25), 3), round(quantile(paired, 0.75), 3)]
        ratio[f"{key}_of_minima"] = round(min(flat["transformers-eager"]) / min(flat[name]), 3)
    print(json.dumps(ratio), flush=True)


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
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    fns = impls(a)
    common = {"dim": a.dim, "ffn_dim": a.ffn_dim, "experts": a.experts, "top_k": a.top_k, "device": "cpu"}
    common |= {"torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": "fp32"}
    common |= {"rounds": a.rounds, "iters": a.iters}
    for tokens in a.tokens:
        run_token_count(a, fns, tokens, common)


if __name__ == "__main__":
    main()
