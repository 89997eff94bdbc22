"""SPHINX-X: frozen vision towers + projector + tags + LLM decoder, and the loss (docs/model.md).

Why one module: this is where image views become LLM positions. It owns the projector
(Linear(4608, d) + LayerNorm(d)), the learnable `start_img` / `end_img` tags that wrap every real
view, the bare `skip_token` that stands in for a fully padded cell, the sequence assembly and the
masked cross-entropy. The decoder (`llm.py`) and the towers (`vision.py`) know nothing of each other.

Sequence of one sample (docs/model.md, "Sequence layout"): [BOS] [global view] [cell 0 | SKIP] ...
[cell n-1 | SKIP] [text], each real view as [start_img, 257 fused tokens, end_img]; positions 0..L-1
contiguous; causal attention; right padding. Text-only samples have no image block.

Batch format (what the data pipeline produces; see `collate`):

- `tokens` [B, T] int64: the tokenised conversation, BOS at column 0 and EOS appended,
  right-padded with any id (padding is never read as a target);
- `labels` [B, T] int64: labels[b, i] = tokens[b, i] where token i is a target (answer + its
  trailing "\\n###"), else -100 (HF convention: the model shifts, so the hidden state before a
  token predicts it). Column 0 (BOS) is always -100;
- `text_lengths` [B]: real text length per sample;
- `image_slots` [B, 1 + g*g]: SLOT_VIEW (1) / SLOT_SKIP (0) per slot (global, then cells in raster
  order), SLOT_NONE (-1) for every slot of a text-only sample;
- `dino_pixels` [N, 3, 224, 224] and `convnext_pixels` [N, 3, cs, cs]: every real view of the
  micro-batch in sample order, then slot order (N may be 0). One batched call per encoder;
- `rows` [B] int64: the decoder row of each sample. `arange(B)` (the default) gives every sample
  a row of its own, right-padded to the longest; packed rows (`rows` from the data pipeline's
  first-fit) hold several whole samples end to end, in batch order, each attending only to
  itself with positions restarting at its BOS (docs/model.md, "Packed rows").

Loss (docs/model.md, "Loss normalisation over the global batch"): forward returns the CE sum over target
tokens and their count, so a trainer can divide by the GLOBAL target count (invariant to world size and
accumulation), plus the MoE aux term already weighted by the decoder. The LM head runs only at target
positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sphinxx.model.anyres import (
    SLOT_SKIP,
    SLOT_VIEW,
    TAGGED_VIEW_TOKENS,
    VIEW_TOKENS,
    AnyResConfig,
    ProcessedImage,
    num_visual_tokens,
)
from sphinxx.model.llm import Transformer
from sphinxx.model.vision import VisionArgs, VisionEncoders, load_vision_weights
from sphinxx.schema.decoder import ModelArgs

IGNORE_INDEX = -100
SLOT_NONE = -1  # every slot of a text-only sample


@dataclass
class SphinxArgs:
    """One SPHINX-X model: decoder shape, vision towers and the any-resolution layout."""

    llm: ModelArgs = field(default_factory=ModelArgs)
    vision: VisionArgs = field(default_factory=VisionArgs)
    image: AnyResConfig = field(default_factory=AnyResConfig)

    def __post_init__(self) -> None:
        if self.vision.convnext_view_size != self.image.convnext_view_size:
            raise ValueError(
                f"vision.convnext_view_size {self.vision.convnext_view_size} != image.convnext_view_size "
                f"{self.image.convnext_view_size}; the processor must produce what the tower expects"
            )
        if self.vision.dino_view_size != self.image.dino_view_size or self.vision.num_tokens != VIEW_TOKENS:
            raise ValueError(
                f"DINOv2 views must be 224 px (257 tokens per view), got {self.vision.dino_view_size}"
            )


@dataclass
class SphinxSample:
    """One tokenised sample before collation (`labels` in the HF convention, see module doc)."""

    tokens: Sequence[int] | torch.Tensor
    labels: Sequence[int] | torch.Tensor
    image: ProcessedImage | None = None


@dataclass
class SphinxBatch:
    """A collated micro-batch (field meanings in the module docstring)."""

    tokens: torch.Tensor  # [B, T] int64
    labels: torch.Tensor  # [B, T] int64, -100 = not a target
    text_lengths: torch.Tensor  # [B] int64
    image_slots: torch.Tensor  # [B, 1 + g*g] int64 (SLOT_VIEW / SLOT_SKIP / SLOT_NONE); [B, 0] if no images
    dino_pixels: torch.Tensor  # [N, 3, 224, 224]
    convnext_pixels: torch.Tensor  # [N, 3, cs, cs]
    rows: torch.Tensor  # [B] int64: decoder row of each sample (arange: one sample per row)

    def to(self, device: torch.device | str) -> SphinxBatch:
        return SphinxBatch(**{k: v.to(device, non_blocking=True) for k, v in self.__dict__.items()})

    @property
    def num_targets(self) -> int:
        """Target tokens in this micro-batch (sum it over ranks for the global normaliser)."""
        return int((self.labels != IGNORE_INDEX).sum())

    def image_tokens(self) -> list[int]:
        """LLM positions taken by each sample's image block."""
        rows = self.image_slots.tolist()
        return [
            sum(TAGGED_VIEW_TOKENS if s == SLOT_VIEW else 1 if s == SLOT_SKIP else 0 for s in r) for r in rows
        ]

    def sequence_lengths(self) -> list[int]:
        """LLM positions of each sample (image block + text), whichever row it sits in."""
        return [t + i for t, i in zip(self.text_lengths.tolist(), self.image_tokens(), strict=True)]


def collate(
    samples: Sequence[SphinxSample],
    pad_id: int = 0,
    image: AnyResConfig | None = None,
    rows: Sequence[int] | None = None,
) -> SphinxBatch:
    """Stack samples (with or without images) into one right-padded SphinxBatch; `rows` packs them
    (the decoder row of each sample, rows numbered 0..R-1 with none empty; default one row each)."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    rows = list(range(len(samples))) if rows is None else list(rows)
    if len(rows) != len(samples) or sorted(set(rows)) != list(range(max(rows) + 1)):
        raise ValueError(f"rows {rows} must number {len(samples)} samples' rows 0..R-1 with none empty")
    first = next((s.image for s in samples if s.image is not None), None)
    # Text-only rows get SLOT_NONE in every slot of the batch's layout width.
    num_slots = len(first.slots) if first is not None else image.num_slots if image is not None else 0
    tokens, labels, slots, dino, convnext = [], [], [], [], []
    for i, sample in enumerate(samples):
        tok = torch.as_tensor(sample.tokens, dtype=torch.long)
        lab = torch.as_tensor(sample.labels, dtype=torch.long)
        if tok.ndim != 1 or tok.shape != lab.shape or tok.numel() < 1:
            raise ValueError(f"sample {i}: tokens and labels must be 1-D of the same non-zero length")
        if lab[0] != IGNORE_INDEX:
            raise ValueError(f"sample {i}: labels[0] (BOS) must be {IGNORE_INDEX}; nothing predicts it")
        tokens.append(tok)
        labels.append(lab)
        if sample.image is None:
            slots.append([SLOT_NONE] * num_slots)
            continue
        if len(sample.image.slots) != num_slots:
            raise ValueError(f"sample {i}: {len(sample.image.slots)} image slots, batch uses {num_slots}")
        slots.append(list(sample.image.slots))
        dino.append(sample.image.dino_views)
        convnext.append(sample.image.convnext_views)
    lengths = torch.tensor([t.numel() for t in tokens])
    width = int(lengths.max())
    pad = [width - t.numel() for t in tokens]
    cs = first.convnext_views.shape[-1] if first is not None else (image or AnyResConfig()).convnext_view_size
    return SphinxBatch(
        tokens=torch.stack([F.pad(t, (0, p), value=pad_id) for t, p in zip(tokens, pad, strict=True)]),
        labels=torch.stack([F.pad(t, (0, p), value=IGNORE_INDEX) for t, p in zip(labels, pad, strict=True)]),
        text_lengths=lengths,
        image_slots=torch.tensor(slots, dtype=torch.long).view(len(samples), num_slots),
        dino_pixels=torch.cat(dino) if dino else torch.zeros(0, 3, 224, 224),
        convnext_pixels=torch.cat(convnext) if convnext else torch.zeros(0, 3, cs, cs),
        rows=torch.tensor(rows, dtype=torch.long),
    )


@dataclass
class SphinxOutput:
    """`loss` = ce_sum / num_targets + aux (this micro-batch alone); trainers normalise globally:
    loss_global = ce_sum / (targets summed over ranks and micro-batches) + aux / micro-batches."""

    loss: torch.Tensor  # 0-dim fp32
    ce_sum: torch.Tensor  # 0-dim fp32, summed CE over target tokens
    num_targets: int
    aux_loss: torch.Tensor  # 0-dim fp32, MoE load-balancing term already weighted (0 for dense)


class Assembled(NamedTuple):
    """What `SphinxX.assemble` hands to the decoder: returned, not kept on the module, so that
    nothing of one batch outlives the call (activation-checkpoint recompute, two batches in flight)."""

    h: torch.Tensor  # [R, L] embeddings of the decoder rows, right-padded with zeros
    targets: torch.Tensor  # [R, L] next-token targets, -100 = none
    lengths: list[int]  # real (unpadded) length of each row, for `token_mask`
    segments: list[list[int]]  # per row, the lengths of the samples laid end to end in it


class Projector(nn.Module):
    """Linear(C_vision, d) + LayerNorm(d): no activation, shared by every view
    (docs/model.md, "Fusion, projector and tags")."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()  # PyTorch default init (spec [U], as the released code)
        self.norm.reset_parameters()


class SphinxX(nn.Module):
    """The multimodal model. Build big ones on the meta device, then `to_empty` and load."""

    def __init__(self, args: SphinxArgs):
        super().__init__()
        self.args = args
        dim = args.llm.dim
        self.llm = Transformer(args.llm)
        self.vision = VisionEncoders(args.vision)
        self.projector = Projector(args.vision.out_dim, dim)
        self.start_img = nn.Parameter(torch.empty(1, 1, dim))
        self.end_img = nn.Parameter(torch.empty(1, 1, dim))
        # Only a model that skips has a skip token: an unused parameter would get no gradient.
        self.skip_token = nn.Parameter(torch.empty(1, 1, dim)) if args.image.use_skip_token else None
        if not self.start_img.is_meta:
            self.init_multimodal_weights()

    @torch.no_grad()
    def init_multimodal_weights(self) -> None:
        """Random init of what SPHINX adds to the LLM: projector default, tags uniform [0, 1)."""
        self.projector.reset_parameters()
        for tag in (self.start_img, self.end_img, self.skip_token):
            if tag is not None:
                tag.uniform_(0.0, 1.0)

    def load_vision(self, convnext_path: str | None, dinov2_path: str | None) -> None:
        """Load the frozen towers from local files (see vision.load_vision_weights)."""
        load_vision_weights(self.vision, convnext_path, dinov2_path)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen towers, which are reloaded from their source
        (docs/model.md, "Vision towers")."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("vision.")}

    def num_visual_tokens(self, width: int, height: int) -> int:
        return num_visual_tokens(width, height, self.args.image)

    def encode_views(self, convnext_pixels: torch.Tensor, dino_pixels: torch.Tensor) -> torch.Tensor:
        """All real views of a micro-batch in one call per tower -> tagged [N, 259, d]."""
        feats = self.vision(convnext_pixels, dino_pixels)  # [N, 257, C], no grad
        tokens = self.projector(feats.to(self.projector.proj.weight.dtype))
        n = tokens.shape[0]
        start = self.start_img.to(tokens.dtype).expand(n, 1, -1)
        end = self.end_img.to(tokens.dtype).expand(n, 1, -1)
        return torch.cat([start, tokens, end], dim=1)

    def assemble(self, batch: SphinxBatch) -> Assembled:
        """Embeddings [R, L, d] of the decoder rows, next-token targets [R, L] (-100 = none), each
        row's real length and its samples' lengths (one sample per row unless `batch.rows` packs)."""
        slots = batch.image_slots.tolist()
        num_views = sum(s == SLOT_VIEW for row in slots for s in row)
        if num_views != batch.dino_pixels.shape[0] or num_views != batch.convnext_pixels.shape[0]:
            raise ValueError(
                f"image_slots name {num_views} real views but the batch has {batch.dino_pixels.shape[0]} "
                f"DINOv2 / {batch.convnext_pixels.shape[0]} ConvNeXt views"
            )
        if self.skip_token is None and any(s == SLOT_SKIP for row in slots for s in row):
            raise ValueError("batch has SKIP slots but the model was built with use_skip_token=False")
        text = self.llm.embed(batch.tokens)  # [B, T, d]
        bsz, width, dim = text.shape
        parts = [text.reshape(bsz * width, dim)]
        if num_views:
            views = self.encode_views(batch.convnext_pixels, batch.dino_pixels)
        else:
            # No view in this micro-batch: run the projector and tags on zero views anyway, so every
            # trainable parameter sits at the same place in the graph on every rank (DeepSpeed ZeRO-2
            # reduces gradients in backward order, which must not depend on the data).
            feats = text.new_zeros(0, VIEW_TOKENS, self.args.vision.out_dim)
            tokens = self.projector(feats.to(self.projector.proj.weight.dtype))
            views = torch.cat([self.start_img.expand(0, 1, -1), tokens, self.end_img.expand(0, 1, -1)], dim=1)
        parts.append(views.to(text.dtype).flatten(0, 1))
        view_base = bsz * width
        skip_index = view_base + num_views * TAGGED_VIEW_TOKENS
        if self.skip_token is not None:
            parts.append(self.skip_token.to(text.dtype).view(1, dim))
        zero_index = sum(p.shape[0] for p in parts)
        parts.append(text.new_zeros(1, dim))  # right padding embeds as zeros (never a target)
        source = torch.cat(parts)

        index_rows, label_rows, view = [], [], 0
        lengths = batch.text_lengths.tolist()  # one host sync, not one per sample
        for b, row in enumerate(slots):
            length = lengths[b]
            index = [b * width]  # BOS
            for slot in row:
                if slot == SLOT_VIEW:
                    start = view_base + view * TAGGED_VIEW_TOKENS
                    index.extend(range(start, start + TAGGED_VIEW_TOKENS))
                    view += 1
                elif slot == SLOT_SKIP:
                    index.append(skip_index)
            num_image = len(index) - 1
            index.extend(range(b * width + 1, b * width + length))
            index_rows.append(index)
            label = batch.labels[b, :length]
            label_rows.append(torch.cat([label[:1], label.new_full((num_image,), IGNORE_INDEX), label[1:]]))
        index_rows, label_rows, segments = _pack(batch.rows.tolist(), index_rows, label_rows)
        seq_len = max(len(r) for r in index_rows)
        gather = torch.tensor([r + [zero_index] * (seq_len - len(r)) for r in index_rows], device=text.device)
        labels = torch.stack([F.pad(r, (0, seq_len - r.numel()), value=IGNORE_INDEX) for r in label_rows])
        # Position t predicts token t + 1. In a packed row the last position of a sample meets the
        # next sample's BOS, whose label is always -100 (collate checks it): no target crosses samples.
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        return Assembled(source[gather], targets, [len(r) for r in index_rows], segments)

    @staticmethod
    def token_mask(lengths: Sequence[int], seq_len: int, device: torch.device) -> torch.Tensor:
        """[B, S] bool: True at the real positions of sequences of `lengths` (False on right padding)."""
        real = torch.tensor(list(lengths), device=device)
        return torch.arange(seq_len, device=device)[None, :] < real[:, None]

    def forward(self, batch: SphinxBatch) -> SphinxOutput:
        h, targets, lengths, segments = self.assemble(batch)
        # Right padding must not count in the MoE load-balancing loss (docs/moe.md, "Load-balancing loss").
        token_mask = self.token_mask(lengths, h.shape[1], h.device)
        # One sample per row: plain causal attention. Packed rows: block-diagonal causal, RoPE per sample.
        packed = any(len(s) > 1 for s in segments)
        hidden, aux = self.llm.forward_hidden(h, token_mask=token_mask, segments=segments if packed else None)
        mask = targets != IGNORE_INDEX
        num_targets = int(mask.sum())
        # [M, V]: the head only where a label exists. M = 0 still runs it (sum 0, zero grads), so the
        # head is in every rank's graph, as the projector is (see assemble).
        logits = self.llm.output(hidden[mask]).float()
        ce_sum = F.cross_entropy(logits, targets[mask], reduction="sum")
        loss = ce_sum / max(num_targets, 1) + aux
        return SphinxOutput(loss=loss, ce_sum=ce_sum, num_targets=num_targets, aux_loss=aux)


def _pack(
    rows: list[int], index_rows: list[list[int]], label_rows: list[torch.Tensor]
) -> tuple[list[list[int]], list[torch.Tensor], list[list[int]]]:
    """Per-sample gather indices and labels laid end to end per decoder row (samples in batch order),
    with each row's sample lengths. One sample per row in order (`arange`) returns them as they are."""
    if rows == list(range(len(rows))):
        return index_rows, label_rows, [[len(r)] for r in index_rows]
    num_rows = max(rows) + 1
    packed_index: list[list[int]] = [[] for _ in range(num_rows)]
    packed_labels: list[list[torch.Tensor]] = [[] for _ in range(num_rows)]
    segments: list[list[int]] = [[] for _ in range(num_rows)]
    for row, index, label in zip(rows, index_rows, label_rows, strict=True):
        packed_index[row].extend(index)
        packed_labels[row].append(label)
        segments[row].append(len(index))
    return packed_index, [torch.cat(parts) for parts in packed_labels], segments
