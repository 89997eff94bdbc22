"""The decoder's KV cache and the two things left padding needs: a key mask and per-row positions.

Generation (`generate.py`) runs the decoder once over the whole prompt ("prefill") and then once
per new token. The keys and values of every position seen so far do not change, so each layer
keeps them (`KVCache`, preallocated for the longest sequence the call can reach) and a step
computes only its own query, key and value, then attends over the cache (docs/model.md,
"Generation").

A batch of prompts of different lengths is left-padded, as Hugging Face generation does, so that
every row's next token lands in the same column. `attention_mask` [B, L] (True = a real token,
False = left padding) covers the cached positions and the new ones; from it

- `position_ids` gives each real token its position in its own sequence (0 at its first real
  token, so RoPE sees what training saw: contiguous positions from BOS), and
- `attention_bias` lets a query read the real keys at or before it (causal, offset by the cache
  length), plus itself: a padding query would otherwise read nothing, and a fully masked softmax
  is NaN, which would then spread through its keys and values.
"""

from __future__ import annotations

import torch


def position_ids(attention_mask: torch.Tensor, new: int) -> torch.Tensor:
    """[B, new] positions of the last `new` columns of `attention_mask` [B, L] (padding gets 0)."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp_min(0)[:, -new:]


def attention_bias(attention_mask: torch.Tensor, new: int) -> torch.Tensor:
    """[B, 1, new, L] bool, True where query i (column L - new + i) may read key j.

    Causal with the cache's offset, real keys only, and always the query's own column.
    """
    total = attention_mask.shape[-1]
    query = torch.arange(total - new, total, device=attention_mask.device)[:, None]  # [new, 1]
    key = torch.arange(total, device=attention_mask.device)[None, :]  # [1, L]
    allowed = (key <= query) & attention_mask.bool()[:, None, :]  # [B, new, L]
    return (allowed | (key == query)).unsqueeze(1)


class LayerCache:
    """One layer's keys and values [B, n_kv_heads, max_len, head_dim], written in place."""

    def __init__(self, owner: KVCache, keys: torch.Tensor, values: torch.Tensor):
        self.owner, self.keys, self.values = owner, keys, values

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v [B, n_kv, S, head_dim] after the cached ones; return all of them."""
        start = self.owner.length
        end = start + k.shape[2]
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """Past keys and values of every layer (the `past_key_values` of Llama-style decoders).

    `length` is the number of positions already cached, the same for every row (left padding);
    the decoder advances it after each forward (`advance`).
    """

    def __init__(
        self,
        n_layers: int,
        batch: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.max_len = max_len
        self.length = 0
        self.layers = [
            LayerCache(
                self,
                torch.empty(shape, dtype=dtype, device=device),
                torch.empty(shape, dtype=dtype, device=device),
            )
            for _ in range(n_layers)
        ]

    def check_room(self, new: int) -> None:
        if self.length + new > self.max_len:
            raise ValueError(
                f"the KV cache holds {self.max_len} positions: {self.length} used, {new} more do not fit"
            )

    def advance(self, new: int) -> None:
        self.length += new
