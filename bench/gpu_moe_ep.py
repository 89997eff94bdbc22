"""Multi-GPU check of the MoE layer under expert parallelism: EP = 2/4/8 against EP = 1, fwd+bwd, and timing.

Run on a machine with >= 2 GPUs (NCCL), from the repo root, MegaBlocks on PYTHONPATH as in
bench/GPU.md (without it the kernel falls back to ``grouped``; the ``env`` line says which ran):

    torchrun --standalone --nproc-per-node 8 bench/gpu_moe_ep.py [--tokens 4096 --rounds 3]

CPU smoke of this script (gloo, 2 processes, tiny shapes; what tests/moe runs):

    .venv/bin/torchrun --standalone --nproc-per-node 2 bench/gpu_moe_ep.py --device cpu

Every rank builds the same full Mixtral-shaped layer from one seed (default: dim 4096, ffn 14336,
8 experts, top-2, bf16) and its own micro-batch of ``--tokens`` tokens. The reference is EP = 1 on
every rank (all experts local). For each EP size that divides the world size (2, 4, 8 by default),
the EP groups are contiguous ranks (DeepSpeed's convention), each rank loads its experts' slices
and the layer runs through our all-to-all dispatcher with the kernel ``--kernel`` resolves to.

- ``parity`` (one line per EP size and routing): per rank, the output, the grads of the input and
  of the router equal the rank's EP = 1 reference; the expert grads equal the sum over the EP
  group of the reference's grads for those experts (our dispatcher scales nothing; the eDP
  reduction is DeepSpeed's business). Relative L2, worst rank; bounds output <= 1e-2, grads <=
  2e-2 (bf16 kernels, different row groupings). Routing ``random`` (random router) and ``skewed``
  (every token of every rank prefers the first two experts, so the other ranks receive no rows:
  zero-size all-to-all splits and idle experts).
- ``timing`` (one line per configuration): fwd+bwd ms per step, the slowest rank's median (a step
  waits for the slowest), interleaved rounds with the order rotating; the EP = 1 line is the
  same per-rank work without the exchange, so the difference is the exchange's cost.
- ``summary``: parity_ok; exit code 1 on a parity failure.

JSON lines come from rank 0 only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.distributed as dist
from gpu_common import bootstrap_sphinxx, emit, env_row, fwd_bwd_ms, moe_fwd_bwd_flops, rel_l2

OUT_TOL, GRAD_TOL = 1e-2, 2e-2
ROUTINGS = ("random", "skewed")


def full_state(a, routing: str) -> dict[str, torch.Tensor]:
    """The same full layer on every rank (one seed); ``skewed``: all tokens prefer experts 0 and 1."""
    gen = torch.Generator(device=a.device).manual_seed(0)
    rows = a.experts * a.ffn_dim

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=a.device, dtype=torch.bfloat16) * 0.02

    state = {"router.layer.weight": randn(a.experts, a.dim)}
    state |= {f"experts.mlp.{n}": randn(rows, a.dim) for n in ("w1", "v1", "w2")}
    if routing == "skewed":
        router = torch.zeros(a.experts, a.dim, device=a.device, dtype=torch.bfloat16)
        router[0], router[1] = 3 * direction(a), 2 * direction(a)
        state["router.layer.weight"] = router
    return state


def direction(a) -> torch.Tensor:
    gen = torch.Generator(device=a.device).manual_seed(1)
    return torch.randn(a.dim, generator=gen, device=a.device, dtype=torch.bfloat16) / a.dim**0.5


def inputs(a, routing: str, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=a.device).manual_seed(1000 + rank)
    x = torch.randn(1, a.tokens, a.dim, generator=gen, device=a.device, dtype=torch.bfloat16)
    if routing == "skewed":
        x = direction(a) * a.dim**0.5 + 0.05 * x
    grad = torch.randn(x.shape, generator=gen, device=a.device, dtype=torch.bfloat16) * 0.01
    return x, grad


def build(a, state: dict[str, torch.Tensor], ep=None):
    from sphinxx.model.attach import attach_expert_parallel
    from sphinxx.model.expert_parallel import expert_range
    from sphinxx.model.moe import MoE, MoEArgs

    ep_size = 1 if ep is None else ep.size
    with torch.device("meta"):  # no init on the device: the weights come from `state`
        moe = MoE(
            MoEArgs(a.dim, a.ffn_dim, num_experts=a.experts, top_k=a.top_k, kernel=a.kernel, ep_size=ep_size)
        )
    mine = expert_range(a.experts, ep_size, 0 if ep is None else ep.rank)
    rows = slice(mine.start * a.ffn_dim, mine.stop * a.ffn_dim)
    local = {k: (v[rows] if ".mlp." in k else v).clone() for k, v in state.items()}
    moe.load_state_dict(local, assign=True)
    if ep is not None:
        attach_expert_parallel(moe, ep)
    return moe, rows


def run(moe, x, grad) -> dict[str, torch.Tensor]:
    moe.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_()
    y, _ = moe(xi)
    y.backward(grad)
    return {"out": y.detach(), "x": xi.grad, **{n: p.grad for n, p in moe.named_parameters()}}


def parity(a, groups: dict, rank: int, world: int) -> bool:
    ok = True
    for routing in ROUTINGS:
        state = full_state(a, routing)
        x, grad = inputs(a, routing, rank)
        ref_moe, _ = build(a, state)
        ref = run(ref_moe, x, grad)
        kernel = None
        for ep_size, (ep, _) in groups.items():
            moe, rows = build(a, state, ep)
            got = run(moe, x, grad)
            errs = {k: rel_l2(got[k], ref[k]) for k in ("out", "x", "router.layer.weight")}
            for name in ("w1", "v1", "w2"):
                summed = ref[f"experts.mlp.{name}"].float()  # the EP group's sum of the reference grads
                dist.all_reduce(summed, group=ep.group)
                errs[name] = rel_l2(got[f"experts.mlp.{name}"], summed[rows])
            load = moe.tokens_per_expert.clone()  # this rank's tokens per global expert
            dist.all_reduce(load, group=ep.group)
            computed = int(load[rows.start // a.ffn_dim : rows.stop // a.ffn_dim].sum())  # rows this rank ran
            finite = all(bool(torch.isfinite(t).all()) for t in got.values())
            kernel = kernel or _kernel_used(a, x)
            rows_all = [None] * world
            dist.all_gather_object(rows_all, {"errs": errs, "finite": finite, "computed": computed})
            del moe, got
            if rank == 0:
                worst = {k: max(r["errs"][k] for r in rows_all) for k in errs}
                within = worst["out"] <= OUT_TOL and all(
                    v <= GRAD_TOL for k, v in worst.items() if k != "out"
                )
                good = within and all(r["finite"] for r in rows_all)
                ok &= good
                emit("parity", ep_size=ep_size, routing=routing, kernel=kernel, vs="ep1", world=world,
                     rel_l2_worst_rank=worst, finite=all(r["finite"] for r in rows_all),
                     rows_computed_per_rank=[r["computed"] for r in rows_all], ok=good)  # fmt: skip
        del ref_moe, ref
    flag = torch.tensor([int(ok)], device=a.device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _kernel_used(a, x) -> str:
    from sphinxx.model import moe_kernels
    from sphinxx.model.moe import MoEArgs

    args = MoEArgs(a.dim, a.ffn_dim, num_experts=a.experts, top_k=a.top_k, kernel=a.kernel)
    return moe_kernels.resolve_kernel(a.kernel, x.reshape(-1, a.dim), args, ep_attached=True)


def timing(a, groups: dict, rank: int, world: int) -> None:
    state = full_state(a, "random")
    x, grad = inputs(a, "random", rank)
    configs = {"ep1": build(a, state)[0]}
    configs |= {f"ep{s}": build(a, state, ep)[0] for s, (ep, _) in groups.items()}
    del state
    names = list(configs)
    per_round: dict[str, list[float]] = {n: [] for n in names}
    for r in range(a.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            moe = configs[name]
            dist.barrier()
            times = fwd_bwd_ms(lambda t, m=moe: m(t)[0], x, grad, a.warmup if r == 0 else 1, a.iters)
            moe.zero_grad(set_to_none=True)
            per_round[name].append(statistics.median(times))
    mine = {n: statistics.median(v) for n, v in per_round.items()}
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        flops = moe_fwd_bwd_flops(a.tokens, a.top_k, a.dim, a.ffn_dim)
        base = max(e["ep1"] for e in everyone)
        for name in names:
            slowest = max(e[name] for e in everyone)
            emit("timing", config=name, tokens_per_rank=a.tokens, fwd_bwd_ms_slowest_rank=round(slowest, 3),
                 fwd_bwd_ms_per_rank=[round(e[name], 3) for e in everyone],
                 tflops_per_rank=round(flops / slowest / 1e9, 1),
                 vs_ep1=round(slowest / base, 3))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--device", default="cuda", help="cuda (NCCL), or cpu (gloo) for a smoke test, tiny shapes"
    )
    ap.add_argument("--ep-sizes", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--kernel", default="auto", help="auto: megablocks if it imports, else grouped")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per rank")
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--ffn-dim", type=int, default=14336)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    a = ap.parse_args(argv)
    if a.device == "cpu":
        a.tokens, a.dim, a.ffn_dim, a.rounds, a.warmup, a.iters = 32, 64, 128, 2, 1, 1
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if a.device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        a.device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if a.device.startswith("cuda") else "gloo")
    try:
        bootstrap_sphinxx()
        from sphinxx.model.expert_parallel import new_expert_parallel_groups

        sizes = [s for s in a.ep_sizes if 1 < s <= world and world % s == 0 and a.experts % s == 0]
        if rank == 0:
            emit("env", **env_row(a.device), world=world, backend=dist.get_backend(), ep_sizes=sizes,
                 kernel_requested=a.kernel, nccl=".".join(map(str, torch.cuda.nccl.version()))
                 if a.device.startswith("cuda") else None,
                 shape={"tokens_per_rank": a.tokens, "dim": a.dim, "ffn_dim": a.ffn_dim,
                        "experts": a.experts, "top_k": a.top_k})  # fmt: skip
        if not sizes:
            if rank == 0:
                emit("summary", parity_ok=False, error=f"no EP size of {a.ep_sizes} fits world size {world}")
            return 2
        groups = {s: new_expert_parallel_groups(s) for s in sizes}  # collective: every rank, same order
        ok = parity(a, groups, rank, world)
        timing(a, groups, rank, world)
        if rank == 0:
            emit("summary", parity_ok=ok, tol={"out": OUT_TOL, "grad": GRAD_TOL}, world=world)
        return 0 if ok else 1
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
