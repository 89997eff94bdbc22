"""next_token (model/sampling/next_token.py): argmax at T = 0, seeded draws follow the distribution."""

from __future__ import annotations

import pytest
import torch

from sphinxx.model.sampling.next_token import next_token


def test_greedy_is_argmax_with_the_lowest_id_on_ties() -> None:
    logits = torch.tensor([[0.1, 2.0, 2.0, -1.0], [5.0, 0.0, 0.0, 0.0]])
    assert next_token(logits).tolist() == [1, 0]


def test_seeded_draws_repeat_and_follow_the_tempered_distribution() -> None:
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).expand(4000, 3)
    draw = lambda seed, **kw: next_token(logits, generator=torch.Generator().manual_seed(seed), **kw)  # noqa: E731
    first = draw(0, temperature=1.0)
    assert torch.equal(first, draw(0, temperature=1.0))
    freq = torch.bincount(first, minlength=3).float() / 4000
    torch.testing.assert_close(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.03, rtol=0)
    # T = 2 flattens: p_i proportional to sqrt(p_i).
    flat = torch.tensor([0.6, 0.3, 0.1]).sqrt()
    freq2 = torch.bincount(draw(1, temperature=2.0), minlength=3).float() / 4000
    torch.testing.assert_close(freq2, flat / flat.sum(), atol=0.03, rtol=0)
    # top_p 0.7 keeps the two most likely tokens, renormalised.
    freq3 = torch.bincount(draw(2, temperature=1.0, top_p=0.7), minlength=3).float() / 4000
    assert freq3[2] == 0
    torch.testing.assert_close(freq3[:2], torch.tensor([2 / 3, 1 / 3]), atol=0.03, rtol=0)


def test_negative_temperature_is_refused() -> None:
    with pytest.raises(ValueError, match="temperature"):
        next_token(torch.zeros(1, 2), temperature=-0.5)
