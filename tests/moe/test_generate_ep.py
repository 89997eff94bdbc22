"""Generation in the training layout: experts split by EP across 2 gloo ranks, stepping in lockstep.

Each rank holds half of the experts of a tiny Mixtral decoder and answers its own prompts (of
different lengths, one rank's rows stopping early at an EOS); every decoder forward is an
all-to-all between the ranks, so the rank that is done keeps stepping until the other is
(`keep_going`, an all-reduce). The answers must be the tokens one process with every expert
gives for the same prompts.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from sphinxx.model.generate import GenerationConfig, generate_text
from sphinxx.model.llm import Transformer
from tests.jobs._dist import run_distributed
from tests.model.test_llm import MOE_ARGS, hf_mixtral, ours_from

PROMPTS = {0: [[5, 9, 13, 17, 21, 25, 29], [40, 41]], 1: [[7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]]}


def _rank_slice(state: dict[str, torch.Tensor], rank: int, ep_size: int) -> dict[str, torch.Tensor]:
    """This rank's rows of every expert matrix ([E * F, H], expert-major); the rest replicated."""
    out = {}
    for name, tensor in state.items():
        if ".moe.experts." in name:
            rows = tensor.shape[0] // ep_size
            tensor = tensor[rank * rows : (rank + 1) * rows]
        out[name] = tensor.clone()
    return out


def _worker(
    rank: int, world: int, state: dict[str, torch.Tensor], config: GenerationConfig
) -> list[list[int]]:
    import torch.distributed as dist

    from sphinxx.model.attach import attach_expert_parallel
    from sphinxx.model.expert_parallel import new_expert_parallel_groups

    ep, _ = new_expert_parallel_groups(world)
    model = Transformer(replace(MOE_ARGS, ep_size=world)).eval()
    model.load_state_dict(_rank_slice(state, ep.rank, world))
    attach_expert_parallel(model, ep)
    steps = [0]

    def keep_going(active: bool) -> bool:
        steps[0] += 1
        flag = torch.tensor([int(active)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    out = generate_text(model, PROMPTS[rank], config, keep_going=keep_going)
    return [[r.tokens for r in out], steps[0]]


def test_two_ep_ranks_generate_the_tokens_of_one() -> None:
    full = ours_from(hf_mixtral(MOE_ARGS), MOE_ARGS, family="mixtral")
    free = generate_text(full, PROMPTS[0], GenerationConfig(max_new_tokens=10))
    # Rank 0's first row stops at its 3rd token; the other rows run to the limit.
    config = GenerationConfig(max_new_tokens=10, eos_ids=(free[0].tokens[2],))
    want = {rank: [r.tokens for r in generate_text(full, PROMPTS[rank], config)] for rank in PROMPTS}
    assert len(want[0][0]) == 2
    got = run_distributed(_worker, 2, full.state_dict(), config)
    assert [g[0] for g in got] == [want[0], want[1]]
    assert got[0][1] == got[1][1]  # the same number of steps on both ranks: lockstep
