"""Packed rows: several samples in one decoder row, each attending only to itself.

A packed row holds whole samples one after another, then right padding. `segments` lists, per
row, the lengths of its samples (every row's lengths sum to at most the row width). From them:

- `packed_positions`: RoPE positions restarting at 0 at each sample's first token (BOS), so a
  sample sees exactly the positions it would see alone in a row; padding counts on from 0 as a
  segment of its own;
- attention that is causal within each sample and blind across samples: the block-diagonal
  causal mask (query i reads key j iff both are in one sample and j <= i), computed without
  building it, so a packed row costs the sum of its samples' squared lengths, not the row's:
  - `VarlenLayout` / `varlen_attention`: flash-attn's `flash_attn_varlen_func` on CUDA, every
    row's segments (padding included) laid end to end with cumulative offsets; used when
    flash-attn is installed and the tensors are CUDA fp16/bf16;
  - `SegmentLayout` / `segment_attention`: otherwise, one causal SDPA call per sample (CPU, or a
    GPU without flash-attn). An SDPA call with the [S, S] mask would compute every query against
    every key of the row: on the CPU bench that made packed training slower than padded
    (docs/training.md, "Packed rows"). Right padding gets zeros (nothing reads it).
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def _with_padding(segments: Sequence[Sequence[int]], width: int) -> list[list[int]]:
    rows = []
    for b, segs in enumerate(segments):
        used = sum(segs)
        if used > width or any(s < 1 for s in segs):
            raise ValueError(f"row {b}: segments {list(segs)} do not fit a row of {width} positions")
        rows.append([*segs, width - used] if used < width else list(segs))
    return rows


def packed_positions(
    segments: Sequence[Sequence[int]], width: int, device: torch.device | str
) -> torch.Tensor:
    """[B, S] int64 RoPE positions: 0, 1, ... from the start of every segment."""
    rows = _with_padding(segments, width)
    pos = [torch.cat([torch.arange(n) for n in r]) for r in rows]
    return torch.stack(pos).to(device)


@dataclass(frozen=True)
class SegmentLayout:
    """Per row, the (start, length) of each real sample; the positions after them are padding."""

    spans: tuple[tuple[tuple[int, int], ...], ...]


def segment_layout(segments: Sequence[Sequence[int]], width: int) -> SegmentLayout:
    _with_padding(segments, width)  # checks that every row fits
    spans = []
    for segs in segments:
        starts = [0, *itertools.accumulate(segs)][:-1]
        spans.append(tuple(zip(starts, segs, strict=True)))
    return SegmentLayout(tuple(spans))


def segment_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: SegmentLayout, gqa: bool
) -> torch.Tensor:
    """Causal SDPA over each sample alone; q [B, H, S, D], k, v [B, H_kv, S, D] -> [B, H, S, D]."""
    rows = []
    for b, spans in enumerate(layout.spans):
        parts = [
            F.scaled_dot_product_attention(
                q[b : b + 1, :, s : s + n],
                k[b : b + 1, :, s : s + n],
                v[b : b + 1, :, s : s + n],
                is_causal=True,
                enable_gqa=gqa,
            )  # fmt: skip
            for s, n in spans
        ]
        used = sum(n for _, n in spans)
        if used < q.shape[2]:
            parts.append(q.new_zeros(1, q.shape[1], q.shape[2] - used, q.shape[3]))
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows)


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


PackedMask = torch.Tensor | VarlenLayout | SegmentLayout


def packed_attention_inputs(
    segments: Sequence[Sequence[int]], width: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, PackedMask]:
    """RoPE positions [B, S] and what attention takes: a varlen layout where flash-attn can run,
    else the samples' spans for one SDPA call each."""
    positions = packed_positions(segments, width, device)
    if flash_varlen_available(device, dtype):
        return positions, varlen_layout(segments, width, device)
    return positions, segment_layout(segments, width)
