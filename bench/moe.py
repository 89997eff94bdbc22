"""CPU benchmark: our MoE kernels vs transformers' MixtralSparseMoeBlock on the same weights and tokens.

Run:  .venv/bin/python bench/moe.py [--dim 256 --ffn-dim 512 --tokens 256 1024 4096 --iters 5]

For each token count, one JSON line per implementation with the median fwd+bwd time, plus one
line with the ratios (transformers eager time / ours; > 1 means ours is faster). Each row also
records the max abs difference of the outputs against transformers, so a fast wrong kernel shows.
Timings are noisy on shared 2-core machines: compare ratios from the same run only.
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


def fwd_bwd_ms(fn, x: torch.Tensor, grad: torch.Tensor, iters: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for i in range(iters + 1):  # first call is warm-up
        xi = x.clone().requires_grad_()
        t0 = time.perf_counter()
        out = fn(xi)
        (out * grad).sum().backward()
        if i:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--ffn-dim", type=int, default=512)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    hf, ours = build(a.dim, a.ffn_dim, a.experts, a.top_k, "eager")
    hf_grouped = None
    try:
        hf_grouped, _ = build(a.dim, a.ffn_dim, a.experts, a.top_k, "grouped_mm")
        hf_grouped.load_state_dict(hf.state_dict())
    except (KeyError, ValueError) as e:  # older transformers without the experts interface
        print(json.dumps({"impl": "transformers-grouped_mm", "skipped": repr(e)}), flush=True)
    common = {"dim": a.dim, "ffn_dim": a.ffn_dim, "experts": a.experts, "top_k": a.top_k}
    common |= {"torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": "fp32"}
    for tokens in a.tokens:
        gen = torch.Generator().manual_seed(tokens)
        x = torch.randn(1, tokens, a.dim, generator=gen)
        grad = torch.randn(1, tokens, a.dim, generator=gen)
        hf_ms, y_hf = fwd_bwd_ms(hf, x, grad, a.iters)
        row = {**common, "tokens": tokens, "impl": "transformers-eager", "fwd_bwd_ms": round(hf_ms, 3)}
        print(json.dumps(row), flush=True)
        ratios = {}
        if hf_grouped is not None:  # transformers' own grouped_mm experts backend, same weights
            ms, y = fwd_bwd_ms(hf_grouped, x, grad, a.iters)
            print(json.dumps({**common, "tokens": tokens, "impl": "transformers-grouped_mm", "fwd_bwd_ms": round(ms, 3),
                              "max_abs_diff_vs_transformers": (y - y_hf).abs().max().item()}), flush=True)  # fmt: skip
            ratios["transformers_over_transformers_grouped_mm"] = round(hf_ms / ms, 3)
        for kernel in ("grouped", "loop"):
            ours.args.kernel = kernel
            ms, y = fwd_bwd_ms(lambda xi: ours(xi)[0], x, grad, a.iters)
            err = (y - y_hf).abs().max().item()
            print(json.dumps({**common, "tokens": tokens, "impl": f"ours-{kernel}", "fwd_bwd_ms": round(ms, 3),
                              "max_abs_diff_vs_transformers": err}), flush=True)  # fmt: skip
            ratios[f"transformers_over_{kernel}"] = round(hf_ms / ms, 3)
        print(json.dumps({**common, "tokens": tokens, "impl": "ratio", **ratios}), flush=True)


if __name__ == "__main__":
    main()
