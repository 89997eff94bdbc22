"""Expert parallelism: EP = 2 over gloo equals EP = 1, and what one EP rank computes equals the reference.

- Over gloo (2 processes): outputs, aux losses and grads of EP = 2 equal EP = 1 on one process.
- One process, EP sizes 1/2/4/8 simulated: the rows one rank receives (from every source rank,
  in arrival order, skewed, some experts and some sources with nothing) through
  ``local_experts`` with the grouped and loop kernels equal a per-row fp64 reference, fwd and bwd.
  The GPU twin of this check, with MegaBlocks, is bench/gpu_moe_local.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.testing import assert_close

from sphinxx.model import moe_kernels
from sphinxx.model.attach import attach_expert_parallel
from sphinxx.model.expert_parallel import (
    expert_range,
    local_expert_order,
    local_experts,
    new_expert_parallel_groups,
)
from sphinxx.model.moe import MoE, MoEArgs
from tests import ranks

H, F, E, K, WORLD = 64, 128, 8, 2, 2
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _full_state(skewed: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    state = {
        "router.layer.weight": torch.randn(E, H, generator=gen) * 0.1,
        **{f"experts.mlp.{n}": torch.randn(E * F, H, generator=gen) * 0.1 for n in ("w1", "v1", "w2")},
    }
    if skewed:  # every token of both ranks prefers experts 6 and 7, both on EP rank 1
        router = torch.zeros(E, H)
        router[6], router[7] = 3 * _direction(), 2 * _direction()
        state["router.layer.weight"] = router
    return state


def _direction() -> torch.Tensor:
    return torch.randn(H, generator=torch.Generator().manual_seed(1))


def _inputs(skewed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(WORLD, 3, 10, H, generator=gen)  # [rank, B, S, H]: each rank's micro-batch
    if skewed:
        x = _direction() + 0.05 * x
    return x, torch.randn(x.shape, generator=gen)


def _reference(state, x, grad_out, kernel):
    """EP = 1, one process, the two micro-batches one after the other; grads summed over both."""
    ref = MoE(MoEArgs(H, F, num_experts=E, top_k=K, kernel=kernel))
    ref.load_state_dict(state)
    outs = []
    for r in range(WORLD):
        xr = x[r].clone().requires_grad_()
        y, aux = ref(xr)
        ((y * grad_out[r]).sum() + aux).backward()
        outs.append((y.detach(), aux.detach(), xr.grad, ref.tokens_per_expert.clone()))
    return ref, outs


def _check_rank(rank: int, skewed: bool, kernel: str, ep) -> None:
    state, (x, grad_out) = _full_state(skewed), _inputs(skewed)
    ref, ref_outs = _reference(state, x, grad_out, kernel)
    mine = expert_range(E, WORLD, rank)
    rows = slice(mine.start * F, mine.stop * F)
    moe = MoE(MoEArgs(H, F, num_experts=E, top_k=K, kernel=kernel, ep_size=WORLD))
    moe.load_state_dict({k: v[rows] if ".mlp." in k else v for k, v in state.items()})
    attach_expert_parallel(moe, ep)
    assert moe.experts.mlp.w1.allreduce is False and moe.experts.mlp.w1.group_name == "ep_size_2"

    xr = x[rank].clone().requires_grad_()
    y, aux = moe(xr)
    ((y * grad_out[rank]).sum() + aux).backward()
    y_ref, aux_ref, xgrad_ref, counts_ref = ref_outs[rank]
    assert_close(y, y_ref, **TOL)
    assert_close(aux, aux_ref, rtol=1e-6, atol=0)
    assert_close(xr.grad, xgrad_ref, **TOL)
    assert torch.equal(moe.tokens_per_expert, counts_ref)
    # Expert grads: the EP rank's grad already sums both ranks' tokens (no reduction needed here).
    for n in ("w1", "v1", "w2"):
        assert_close(getattr(moe.experts.mlp, n).grad, getattr(ref.experts.mlp, n).grad[rows], **TOL)
    # Router grads are per-rank; their sum over data parallel is the reference's.
    router_grad = moe.router.layer.weight.grad.clone()
    dist.all_reduce(router_grad)
    assert_close(router_grad, ref.router.layer.weight.grad, **TOL)
    if skewed:
        assert moe.tokens_per_expert[:6].sum() == 0  # EP rank 0 received zero rows


def _worker(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        ep, _ = new_expert_parallel_groups(WORLD)
        assert ep.size == WORLD and ep.rank == rank
        for skewed in (False, True):
            for kernel in ("loop", "grouped"):
                _check_rank(rank, skewed, kernel, ep)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ep2_over_gloo_equals_ep1(tmp_path) -> None:
    # FileStore rendezvous: no port to pick, and the file is removed when the group is destroyed.
    ranks.start(_worker, (str(tmp_path / "rendezvous"),), WORLD)


def test_attach_rejects_mismatched_ep_size() -> None:
    from sphinxx.model.expert_parallel import ExpertParallel

    moe = MoE(MoEArgs(H, F, ep_size=1))
    with pytest.raises(ValueError, match="ep_size"):
        attach_expert_parallel(moe, ExpertParallel(group=None, size=2, rank=0))


# --- what one EP rank computes, EP simulated on one process -------------------------------------

SCENARIOS = ("skewed", "one-expert", "nothing")


def _recv_counts(scenario: str, ep_size: int, seed: int) -> torch.Tensor:
    """[source rank, local expert] row counts arriving at one rank."""
    num_local = E // ep_size
    gen = torch.Generator().manual_seed(seed)
    if scenario == "nothing":  # every token of the group went to other ranks' experts
        return torch.zeros(ep_size, num_local, dtype=torch.long)
    if scenario == "one-expert":  # all rows for the rank's last expert
        counts = torch.zeros(ep_size, num_local, dtype=torch.long)
        counts[:, -1] = torch.randint(1, 30, (ep_size,), generator=gen)
        return counts
    # Heavy-tailed loads; local expert 0 gets nothing from anyone (if the rank has more than one),
    # and source rank 0 sends nothing (if there is more than one source).
    counts = (torch.rand(ep_size, num_local, generator=gen) ** 4 * 60).long()
    counts[:, -1] += 1  # at least one row somewhere
    if num_local > 1:
        counts[:, 0] = 0
    if ep_size > 1:
        counts[0] = 0
    return counts


def _arrival_expert_ids(recv_counts: torch.Tensor, rank: int) -> torch.Tensor:
    """Global expert id of every arrived row, written out with Python loops (the independent reference)."""
    num_sources, num_local = recv_counts.shape
    ids = []
    for s in range(num_sources):
        for e in range(num_local):
            ids += [rank * num_local + e] * int(recv_counts[s, e])
    return torch.tensor(ids, dtype=torch.long)


def _per_row_reference(rows, ids, w1, v1, w2):
    """Per-row SwiGLU with each row's own expert, by boolean masks (no grouping at all)."""
    out = rows * 0.0 + 0.0 * (w1.sum() + v1.sum() + w2.sum())  # zeros with grads, also for no rows
    for e in ids.unique().tolist():
        sel = ids == e
        blk = slice(e * F, (e + 1) * F)
        h = torch.nn.functional.silu(rows[sel] @ w1[blk].t()) * (rows[sel] @ v1[blk].t())
        out[sel] = h @ w2[blk]
    return out


def _close_to_fp64(got: torch.Tensor, ref: torch.Tensor, msg: str) -> None:
    # fp32 against fp64: weight grads sum ~100 rows of size ~10, so the absolute bound scales
    # with the largest reference entry (fp32 rounding, not a kernel difference, sets it).
    atol = 1e-5 * max(ref.abs().max().item(), 1.0) if ref.numel() else 0.0
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=atol, msg=msg)


def test_local_expert_order_groups_by_expert_and_inverts() -> None:
    recv = torch.tensor([[2, 0, 1], [0, 3, 1]])  # 2 sources, 3 local experts
    order, inverse, local_counts = local_expert_order(recv, 7)
    local_ids = torch.tensor([0, 0, 2, 1, 1, 1, 2])  # arrival order
    assert local_ids[order].tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert order.tolist() == [0, 1, 3, 4, 5, 2, 6]  # stable: source 0 before source 1 per expert
    assert torch.equal(order[inverse], torch.arange(7))
    assert local_counts.tolist() == [2, 3, 2]


@pytest.mark.parametrize("kernel", ["grouped", "loop"])
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("ep_size", [1, 2, 4, 8])
def test_local_experts_of_one_rank_equal_the_reference(ep_size: int, scenario: str, kernel: str) -> None:
    glu = moe_kernels.GLU_KERNELS[kernel]
    gen = torch.Generator().manual_seed(ep_size)
    full = [torch.randn(E * F, H, generator=gen, dtype=torch.float64) * 0.1 for _ in range(3)]
    for rank in range(ep_size):
        recv = _recv_counts(scenario, ep_size, seed=100 * ep_size + rank)
        ids = _arrival_expert_ids(recv, rank)
        rows = torch.randn(len(ids), H, generator=gen, dtype=torch.float64)
        grad_out = torch.randn(rows.shape, generator=gen, dtype=torch.float64)
        mine = slice(expert_range(E, ep_size, rank).start * F, expert_range(E, ep_size, rank).stop * F)

        # Under test: fp32, this rank's weight slices, rows in arrival order.
        x = rows.float().requires_grad_()
        local = [w[mine].float().requires_grad_() for w in full]
        y = local_experts(x, recv, glu, *local)
        (y * grad_out.float()).sum().backward()

        # Reference: fp64, all experts' weights, row by row.
        x_ref = rows.clone().requires_grad_()
        full_ref = [w.clone().requires_grad_() for w in full]
        y_ref = _per_row_reference(x_ref, ids, *full_ref)
        (y_ref * grad_out).sum().backward()

        msg = f"EP={ep_size} rank={rank} {scenario}"
        _close_to_fp64(y, y_ref, msg)
        _close_to_fp64(x.grad, x_ref.grad, f"{msg} grad x")
        for w, w_ref, name in zip(local, full_ref, ("w1", "v1", "w2"), strict=True):
            _close_to_fp64(w.grad, w_ref.grad[mine], f"{msg} grad {name}")
            outside = torch.ones(E * F, dtype=torch.bool)
            outside[mine] = False
            assert not w_ref.grad[outside].any()  # the reference routed nothing elsewhere
        # Experts without rows get exactly zero grads (not merely small ones).
        for e in range(E // ep_size):
            if recv[:, e].sum() == 0:
                assert not any(w.grad[e * F : (e + 1) * F].any() for w in local), f"{msg} expert {e}"
