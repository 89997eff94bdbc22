"""Any-resolution image processor: canvas, views and skip decisions (docs/model.md, "Any-resolution images").

Why it exists: SPHINX-X sees one square canvas per image, cut into a g x g grid of 224 px cells
plus one downsampled global view. Cells that hold no image content are not encoded; the model
puts one learnable SKIP token in their raster slot instead. This module is the only place that
decides which cells those are, and it decides from the geometry alone (never from pixel values),
so the data pipeline, the token budget and the model always agree.

Procedure per image (docs/model.md, "Any-resolution images"), pure torch + Pillow (no torchvision):

1. resize (bicubic, antialias) so the long side equals the canvas c = grid * 224:
   w' = round(W c / max(W, H)), h' = round(H c / max(W, H)), both >= 1 (round half up);
2. paste at (0, 0) on a canvas that is exactly 0 in CLIP-normalised space (the CLIP mean colour);
3. cell (r, col) of size s = c / g is fully padded iff col * s >= w' or r * s >= h';
4. views: global (whole canvas) first, then the kept cells in raster order. Each view is given
   at 224 px (DINOv2) and at `convnext_view_size` px (ConvNeXt).

Token cost per image (docs/model.md, "Visual tokens per image"): every kept view costs 257 + 2 (start/end
tags) positions, a skipped cell costs 1; a text-only sample has no views and costs 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CELL_SIZE = 224  # grid cells and DINOv2 views are 224 px (docs/model.md, "Any-resolution images")
VIEW_TOKENS = 257  # 1 pooled/CLS + 16 x 16 positions per view (docs/model.md, "Vision towers")
TAGGED_VIEW_TOKENS = VIEW_TOKENS + 2  # with start_img / end_img around it
SKIP_TOKENS = 1  # a bare skip token (docs/model.md, "Skip tokens")

# Slot codes of an image layout: one slot for the global view, then one per grid cell.
SLOT_VIEW = 1  # a real view: consumes the next encoded view
SLOT_SKIP = 0  # a fully padded cell: one SKIP token


@dataclass(frozen=True)
class AnyResConfig:
    """How images become views. `canvas = grid * 224`."""

    grid: int = 2  # g: the canvas is cut into g x g cells of 224 px (2 -> 448 canvas, 3 -> 672)
    convnext_view_size: int = 256  # each view is resized to this for ConvNeXt (256 or 512)
    dino_view_size: int = 224  # each view is resized to this for DINOv2 (16 x 16 patches of 14)
    use_skip_token: bool = (
        True  # False: encode padded cells too (comparisons only, docs/model.md, "Skip tokens")
    )

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ValueError(f"AnyResConfig.grid must be >= 1, got {self.grid}")
        if self.convnext_view_size % 32:
            raise ValueError(
                f"convnext_view_size {self.convnext_view_size} must be a multiple of 32 (ConvNeXt stride)"
            )

    @property
    def canvas(self) -> int:
        return self.grid * CELL_SIZE

    @property
    def num_cells(self) -> int:
        return self.grid * self.grid

    @property
    def num_slots(self) -> int:
        return 1 + self.num_cells


def canvas_size(width: int, height: int, canvas: int) -> tuple[int, int]:
    """(w', h') of the image once its long side is resized to `canvas` (round half up, >= 1)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    long_side = max(width, height)
    # Integer round-half-up of x * canvas / long_side: exact, no float ties.
    new_w = (2 * width * canvas + long_side) // (2 * long_side)
    new_h = (2 * height * canvas + long_side) // (2 * long_side)
    return max(1, new_w), max(1, new_h)


def padded_cells(content_w: int, content_h: int, grid: int) -> list[bool]:
    """Per cell in raster order: True iff no content pixel of a w' x h' paste falls in it."""
    return [
        col * CELL_SIZE >= content_w or row * CELL_SIZE >= content_h
        for row in range(grid)
        for col in range(grid)
    ]


def skip_mask(width: int, height: int, grid: int) -> list[bool]:
    """Per cell in raster order: True iff the cell of a W x H image is fully padded."""
    return padded_cells(*canvas_size(width, height, grid * CELL_SIZE), grid)


def _slots(padded: list[bool], config: AnyResConfig) -> list[int]:
    if not config.use_skip_token:
        return [SLOT_VIEW] * config.num_slots
    return [SLOT_VIEW] + [SLOT_SKIP if p else SLOT_VIEW for p in padded]


def image_slots(width: int, height: int, config: AnyResConfig) -> list[int]:
    """Layout of one image: [global, cell 0, ..., cell g*g-1] as SLOT_VIEW / SLOT_SKIP codes."""
    return _slots(skip_mask(width, height, config.grid), config)


def slot_tokens(slots: list[int]) -> int:
    """LLM positions taken by an image layout (0 for a text-only sample's empty layout)."""
    return sum(TAGGED_VIEW_TOKENS if s == SLOT_VIEW else SKIP_TOKENS for s in slots)


def num_visual_tokens(width: int, height: int, config: AnyResConfig | None = None) -> int:
    """Image positions in the LLM sequence for a W x H image (1295 for any square at 448)."""
    return slot_tokens(image_slots(width, height, config or AnyResConfig()))


@dataclass
class ProcessedImage:
    """The views of one image, ready for batching.

    `slots` has 1 + g*g entries; the i-th SLOT_VIEW entry corresponds to row i of both view
    tensors (global view first, then kept cells in raster order).
    """

    dino_views: torch.Tensor  # [V, 3, 224, 224], CLIP-normalised
    convnext_views: torch.Tensor  # [V, 3, convnext_view_size, convnext_view_size], CLIP-normalised
    slots: list[int]  # SLOT_VIEW / SLOT_SKIP per slot
    content_size: tuple[int, int]  # (w', h') of the pasted image on the canvas
    canvas: torch.Tensor | None = field(default=None, repr=False)  # [3, c, c], kept only on request

    @property
    def num_real_views(self) -> int:
        return sum(1 for s in self.slots if s == SLOT_VIEW)

    @property
    def num_skipped_views(self) -> int:
        return sum(1 for s in self.slots if s == SLOT_SKIP)

    @property
    def num_tokens(self) -> int:
        return slot_tokens(self.slots)


def to_float_image(image: Any) -> torch.Tensor:
    """PIL image or tensor [3, H, W] (uint8 0..255 or float 0..1) -> float32 [3, H, W] in [0, 1]."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must be [3, H, W], got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.float() / 255.0
        return image.float()
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image or a [3, H, W] tensor, got {type(image).__name__}")
    data = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, 3).permute(2, 0, 1).float() / 255.0


def resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bicubic antialiased resize of [..., C, H, W] to size (h, w); a no-op when already there."""
    size = (size, size) if isinstance(size, int) else size
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    batched = x if x.ndim == 4 else x.unsqueeze(0)
    out = F.interpolate(batched, size=size, mode="bicubic", align_corners=False, antialias=True)
    return out if x.ndim == 4 else out.squeeze(0)


def clip_normalize(x: torch.Tensor) -> torch.Tensor:
    """[3, H, W] in [0, 1] -> CLIP-normalised (the CLIP mean colour maps to exactly 0)."""
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


def make_canvas(image: Any, config: AnyResConfig) -> tuple[torch.Tensor, tuple[int, int]]:
    """Steps 1-2: the CLIP-normalised square canvas [3, c, c] and the content size (w', h')."""
    pixels = to_float_image(image)
    _, height, width = pixels.shape
    new_w, new_h = canvas_size(width, height, config.canvas)
    # Bicubic overshoots; clamp to the valid range as an 8-bit pipeline would.
    content = resize(pixels, (new_h, new_w)).clamp_(0.0, 1.0)
    canvas = torch.zeros(3, config.canvas, config.canvas, dtype=torch.float32)
    # Resized before pasting, so no blur crosses the content edge; padding stays exactly 0.
    canvas[:, :new_h, :new_w] = clip_normalize(content)
    return canvas, (new_w, new_h)


def process_image(
    image: Any, config: AnyResConfig | None = None, keep_canvas: bool = False
) -> ProcessedImage:
    """Steps 1-4 for one image (PIL or tensor): views and slot layout."""
    config = config or AnyResConfig()
    canvas, (new_w, new_h) = make_canvas(image, config)
    slots = _slots(padded_cells(new_w, new_h, config.grid), config)
    # Cells are plain crops of the canvas (each exactly 224 px); the global view is downsampled.
    cells = [
        canvas[:, r * CELL_SIZE : (r + 1) * CELL_SIZE, c * CELL_SIZE : (c + 1) * CELL_SIZE]
        for r in range(config.grid)
        for c in range(config.grid)
    ]
    kept = [cell for cell, slot in zip(cells, slots[1:], strict=True) if slot == SLOT_VIEW]
    # The global view is resized from the canvas directly for each encoder (not 448 -> 224 -> 256).
    dino = torch.stack(
        [resize(canvas, config.dino_view_size)] + [resize(v, config.dino_view_size) for v in kept]
    )
    convnext = torch.stack(
        [resize(canvas, config.convnext_view_size)] + [resize(v, config.convnext_view_size) for v in kept]
    )
    return ProcessedImage(
        dino_views=dino,
        convnext_views=convnext,
        slots=slots,
        content_size=(new_w, new_h),
        canvas=canvas if keep_canvas else None,
    )
