"""top_p_filter (model/sampling/top_p.py): hand-checked nucleus and transformers' TopPLogitsWarper."""

from __future__ import annotations

import math

import pytest
import torch

from sphinxx.model.sampling.top_p import top_p_filter


def test_hand_checked_nucleus() -> None:
    logits = torch.tensor([[math.log(p) for p in (0.15, 0.5, 0.05, 0.3)]])
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.5) == [False, True, False, False]  # 0.5 alone reaches 0.5
    assert kept(0.6) == [False, True, False, True]  # 0.5 + 0.3
    assert kept(0.9) == [True, True, False, True]  # 0.5 + 0.3 + 0.15 = 0.95 >= 0.9
    assert kept(1.0) == [True, True, True, True]
    assert kept(1e-9) == [False, True, False, False]  # the top token always survives
    # Kept logits are unchanged.
    assert torch.equal(top_p_filter(logits, 0.6)[0, [1, 3]], logits[0, [1, 3]])


def test_matches_transformers_top_p_warper() -> None:
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    for p in (0.1, 0.5, 0.9, 0.99):
        ours = torch.isfinite(top_p_filter(logits, p))
        theirs = torch.isfinite(TopPLogitsWarper(p)(None, logits.clone()))
        assert torch.equal(ours, theirs), p


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5])
def test_out_of_range_is_refused(p: float) -> None:
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(torch.zeros(1, 3), p)
