"""The engine's side of the run config: the EP size the model was built for."""

from __future__ import annotations

import torch

from tests.jobs._tiny import TINY, TINY_MOE


def test_expert_parallel_size_of_dense_and_moe_models() -> None:
    from sphinxx.jobs.engine import expert_parallel_size
    from sphinxx.model.flavors import get_flavor
    from sphinxx.model.llm import Transformer

    assert expert_parallel_size(torch.nn.Linear(2, 2)) == 1
    assert expert_parallel_size(Transformer(get_flavor("debug", **TINY))) == 1
    assert expert_parallel_size(Transformer(get_flavor("debug-moe", **TINY_MOE, ep_size=2))) == 2
