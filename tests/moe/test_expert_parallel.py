"""EP = 2 over gloo (2 processes) gives the outputs, aux losses and grads of EP = 1 on one process."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.testing import assert_close

from sphinxx.model.expert_parallel import attach_expert_parallel, expert_range, new_expert_parallel_groups
from sphinxx.model.moe import MoE, MoEArgs

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
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"),), nprocs=WORLD, join=True)


def test_attach_rejects_mismatched_ep_size() -> None:
    from sphinxx.model.expert_parallel import ExpertParallel

    moe = MoE(MoEArgs(H, F, ep_size=1))
    with pytest.raises(ValueError, match="ep_size"):
        attach_expert_parallel(moe, ExpertParallel(group=None, size=2, rank=0))
