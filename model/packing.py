"""Packed rows: several samples in one decoder row, each attending only to itself.

A packed row holds whole samples one after another, then right padding. `segments` lists, per
row, the lengths of its samples (every row's lengths sum to at most the row width). From them:

- `packed_positions`: RoPE positions restarting at 0 at each sample's first token (BOS), so a
  sample sees exactly the positions it would see alone in a row; padding counts on from 0 as a
  segment of its own;
- `block_causal_mask`: [B, 1, S, S] bool, True where query i may read key j: the same segment
  and j <= i. Padding is a segment of its own, so a padding query still reads itself (a fully
  masked softmax row would be NaN) and no real token ever reads padding or another sample;
- `VarlenLayout` and `varlen_attention`: the same attention without an S x S mask, through
  flash-attn's `flash_attn_varlen_func` on CUDA (every row's segments, padding included, laid end
  to end as one packed sequence with cumulative offsets). Used only when flash-attn is installed,
  the tensors are on CUDA and in fp16/bf16; otherwise SDPA takes the mask (docs/model.md,
  "Packed rows").
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


def _with_padding(segments: Sequence[Sequence[int]], width: int) -> list[list[int]]:
    rows = []
    for b, segs in enumerate(segments):
        used = sum(segs)
        if used > width or any(s < 1 for s in segs):
            raise ValueError(f"row {b}: segments {list(segs)} do not fit a row of {width} positions")
        rows.append([*segs, width - used] if used < width else list(segs))
    return rows


def segment_ids(segments: Sequence[Sequence[int]], width: int, device: torch.device | str) -> torch.Tensor:
    """[B, S] int64: which segment of its row each position is (padding: one segment after the last)."""
    rows = _with_padding(segments, width)
    ids = [torch.repeat_interleave(torch.arange(len(r)), torch.tensor(r)) for r in rows]
    return torch.stack(ids).to(device)


def packed_positions(
    segments: Sequence[Sequence[int]], width: int, device: torch.device | str
) -> torch.Tensor:
    """[B, S] int64 RoPE positions: 0, 1, ... from the start of every segment."""
    rows = _with_padding(segments, width)
    pos = [torch.cat([torch.arange(n) for n in r]) for r in rows]
    return torch.stack(pos).to(device)


def block_causal_mask(
    segments: Sequence[Sequence[int]], width: int, device: torch.device | str
) -> torch.Tensor:
    """[B, 1, S, S] bool: query i reads key j iff both are in one segment and j <= i."""
    seg = segment_ids(segments, width, device)
    idx = torch.arange(width, device=seg.device)
    causal = idx[None, :] <= idx[:, None]  # [S, S]: key <= query
    return ((seg[:, :, None] == seg[:, None, :]) & causal).unsqueeze(1)


@dataclass(frozen=True)
class VarlenLayout:
    """Every row's segments end to end: offsets of each segment in the flattened [B * S] tokens."""

    cu_seqlens: torch.Tensor  # [num_segments + 1] int32, cumulative segment lengths
    max_seqlen: int


def varlen_layout(segments: Sequence[Sequence[int]], width: int, device: torch.device | str) -> VarlenLayout:
    lengths = [n for r in _with_padding(segments, width) for n in r]
    cu = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return VarlenLayout(cu.to(device), max(lengths))


def flash_varlen_available(device: torch.device, dtype: torch.dtype) -> bool:
    """True where `varlen_attention` can run: CUDA, fp16/bf16, flash-attn installed."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return False
    return importlib.util.find_spec("flash_attn") is not None


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: VarlenLayout) -> torch.Tensor:
    """Causal attention within each segment; q [B, H, S, D], k, v [B, H_kv, S, D] -> [B, H, S, D]."""
    # Lazy: flash-attn is an optional CUDA-only package (not a dependency); callers check
    # `flash_varlen_available` first.
    from flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]  # optional, CUDA only

    bsz, heads, seq_len, head_dim = q.shape

    def flat(x: torch.Tensor) -> torch.Tensor:  # [B, h, S, D] -> [B * S, h, D]
        return x.transpose(1, 2).reshape(bsz * seq_len, x.shape[1], head_dim)

    cu, longest = layout.cu_seqlens, layout.max_seqlen
    out: Any = flash_attn_varlen_func(flat(q), flat(k), flat(v), cu, cu, longest, longest, causal=True)
    return out.view(bsz, seq_len, heads, head_dim).transpose(1, 2)


PackedMask = torch.Tensor | VarlenLayout


def packed_attention_inputs(
    segments: Sequence[Sequence[int]], width: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, PackedMask]:
    """RoPE positions [B, S] and what attention takes: a varlen layout where flash-attn can run,
    else the [B, 1, S, S] block-diagonal causal mask for SDPA."""
    positions = packed_positions(segments, width, device)
    if flash_varlen_available(device, dtype):
        return positions, varlen_layout(segments, width, device)
    return positions, block_causal_mask(segments, width, device)
