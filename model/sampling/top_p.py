"""Nucleus (top-p) filtering of next-token logits (Holtzman et al. 2020, "The Curious Case of
Neural Text Degeneration"): keep the smallest set of most likely tokens whose probabilities sum
to at least p, and mask the rest."""

from __future__ import annotations

import torch


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """logits [..., V] with every token outside the nucleus set to -inf.

    A token is kept when the probability mass of the tokens ranked strictly above it is below
    `top_p`, so the most likely token is always kept (top_p -> 0 is greedy) and top_p = 1 keeps
    everything. Ties at the boundary are broken by the stable sort (lower id first).
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = sorted_logits.float().softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs  # exclusive cumulative sum
    drop_sorted = mass_above >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
