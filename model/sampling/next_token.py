"""The next token of every row from its logits: greedy (temperature 0) or sampled from the
temperature-scaled, nucleus-filtered distribution with an explicit generator (reproducible)."""

from __future__ import annotations

import torch

from sphinxx.model.sampling.top_p import top_p_filter


def next_token(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits [B, V] -> token ids [B] (int64).

    temperature 0: argmax (the lowest id among equal maxima). Otherwise softmax(logits / T) over
    the top-p nucleus, one multinomial draw per row from `generator` (the same seed and inputs
    give the same tokens).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    filtered = top_p_filter(logits.float() / temperature, top_p)
    probs = filtered.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
