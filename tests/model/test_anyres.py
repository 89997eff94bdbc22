"""Any-resolution processor: canvas geometry, skip masks, padding, view order, token counts.

Expected masks and counts are worked out by hand from
docs/model.md, "Any-resolution images" and "Visual tokens per image"
(cell (r, c) of size 224 is skipped iff c*224 >= w' or r*224 >= h'; a view costs 259 positions,
a skipped cell 1), not produced by the code under test.
"""

from __future__ import annotations

import pytest
import torch

from sphinxx.model.anyres import (
    CLIP_MEAN,
    CLIP_STD,
    SLOT_SKIP,
    SLOT_VIEW,
    AnyResConfig,
    canvas_size,
    make_canvas,
    num_visual_tokens,
    process_image,
    skip_mask,
)

F_, T_ = False, True
# (width, height, expected skip mask in raster order)
GRID2 = [
    (600, 600, [F_, F_, F_, F_]),  # 1:1
    (600, 400, [F_, F_, F_, F_]),  # 3:2 -> h' = 299, both rows have content
    (800, 400, [F_, F_, T_, T_]),  # 2:1 -> h' = 224, bottom row empty
    (400, 800, [F_, T_, F_, T_]),  # 1:2 -> w' = 224, right column empty
    (800, 200, [F_, F_, T_, T_]),  # 4:1 -> h' = 112
    (200, 800, [F_, T_, F_, T_]),  # 1:4
    (900, 300, [F_, F_, T_, T_]),  # 3:1 -> h' = 149
    (300, 900, [F_, T_, F_, T_]),  # 1:3
    (3, 50, [F_, T_, F_, T_]),  # tiny portrait: w' = round(26.88) = 27
    (50, 3, [F_, F_, T_, T_]),  # tiny landscape
]
GRID3 = [
    (600, 600, [F_] * 9),
    (800, 400, [F_, F_, F_, F_, F_, F_, T_, T_, T_]),  # 2:1 -> h' = 336: rows 0, 1 kept
    (400, 800, [F_, F_, T_, F_, F_, T_, F_, F_, T_]),
    (900, 300, [F_, F_, F_, T_, T_, T_, T_, T_, T_]),  # 3:1 -> h' = 224: only row 0
    (300, 900, [F_, T_, T_, F_, T_, T_, F_, T_, T_]),
    (800, 200, [F_, F_, F_, T_, T_, T_, T_, T_, T_]),  # 4:1
    (200, 800, [F_, T_, T_, F_, T_, T_, F_, T_, T_]),  # 1:4
    (3, 50, [F_, T_, T_, F_, T_, T_, F_, T_, T_]),  # w' = round(40.32) = 40
]


def expected_tokens(mask: list[bool]) -> int:
    skipped = sum(mask)
    return (1 + len(mask) - skipped) * 259 + skipped


@pytest.mark.parametrize(("width", "height", "mask"), GRID2)
def test_skip_mask_grid2(width: int, height: int, mask: list[bool]) -> None:
    assert skip_mask(width, height, 2) == mask
    assert num_visual_tokens(width, height, AnyResConfig(grid=2)) == expected_tokens(mask)


@pytest.mark.parametrize(("width", "height", "mask"), GRID3)
def test_skip_mask_grid3(width: int, height: int, mask: list[bool]) -> None:
    assert skip_mask(width, height, 3) == mask
    assert num_visual_tokens(width, height, AnyResConfig(grid=3)) == expected_tokens(mask)


def test_token_counts_of_spec_table() -> None:
    # docs/model.md, "Visual tokens per image"
    assert num_visual_tokens(448, 448) == 1295
    assert num_visual_tokens(896, 448) == 779 == 1295 - 258 * 2
    assert num_visual_tokens(672, 672, AnyResConfig(grid=3)) == 2590
    assert num_visual_tokens(896, 448, AnyResConfig(use_skip_token=False)) == 1295
    assert num_visual_tokens(900, 300, AnyResConfig(grid=3, use_skip_token=False)) == 2590


def test_canvas_size_rounding() -> None:
    assert canvas_size(1000, 501, 448) == (448, 224)  # 224.448 rounds down
    assert canvas_size(1000, 500, 448) == (448, 224)
    assert canvas_size(1, 1000, 448) == (1, 448)  # 0.448 -> at least one pixel
    assert canvas_size(3, 50, 448) == (27, 448)
    assert canvas_size(2, 3, 448) == (299, 448)  # 298.67 rounds up
    with pytest.raises(ValueError):
        canvas_size(0, 10, 448)


@pytest.mark.parametrize(("width", "height"), [(800, 400), (400, 800), (3, 50), (333, 517)])
def test_padding_is_exactly_zero_and_content_is_top_left(width: int, height: int) -> None:
    colour = torch.tensor([0.9, 0.1, 0.5])
    image = colour.view(3, 1, 1).expand(3, height, width).clone()
    canvas, (new_w, new_h) = make_canvas(image, AnyResConfig())
    assert (new_w, new_h) == canvas_size(width, height, 448)
    # A constant image stays constant under bicubic resizing: the content is the normalised colour.
    want = (colour - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    content = canvas[:, :new_h, :new_w]
    assert torch.allclose(content, want.view(3, 1, 1).expand_as(content), atol=1e-5)
    assert torch.count_nonzero(canvas[:, new_h:, :]) == 0
    assert torch.count_nonzero(canvas[:, :, new_w:]) == 0


def test_padded_part_of_kept_cells_is_zero() -> None:
    # 600 x 400 -> 448 x 299: bottom cells are kept but rows 299..447 of the canvas are padding.
    processed = process_image(torch.rand(3, 400, 600), AnyResConfig(), keep_canvas=True)
    assert processed.slots == [SLOT_VIEW] * 5
    bottom_left = processed.dino_views[3]  # global, TL, TR, BL, BR
    assert torch.count_nonzero(bottom_left[:, 299 - 224 :, :]) == 0
    assert torch.count_nonzero(bottom_left[:, : 299 - 224, :]) > 0


def test_view_order_and_sizes() -> None:
    # Four constant quadrants: each kept cell must carry its quadrant's colour, in raster order.
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    image = torch.zeros(3, 448, 448)
    for i, colour in enumerate(colours):
        r, c = divmod(i, 2)
        image[:, r * 224 : (r + 1) * 224, c * 224 : (c + 1) * 224] = colour.view(3, 1, 1)
    config = AnyResConfig(convnext_view_size=256)
    processed = process_image(image, config)
    assert processed.dino_views.shape == (5, 3, 224, 224)
    assert processed.convnext_views.shape == (5, 3, 256, 256)
    normalised = (colours - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    for i in range(4):
        cell = processed.dino_views[1 + i]
        assert torch.allclose(cell, normalised[i].view(3, 1, 1).expand_as(cell), atol=1e-5)
        conv = processed.convnext_views[1 + i]
        assert torch.allclose(conv, normalised[i].view(3, 1, 1).expand_as(conv), atol=1e-5)
        # The global view is the whole canvas: quadrant centres keep their colours.
        r, c = divmod(i, 2)
        centre = processed.dino_views[0][:, 56 + 112 * r, 56 + 112 * c]
        assert torch.allclose(centre, normalised[i], atol=1e-4)


def test_skipped_cells_are_not_views() -> None:
    processed = process_image(torch.rand(3, 300, 900), AnyResConfig())
    assert processed.slots == [SLOT_VIEW, SLOT_VIEW, SLOT_VIEW, SLOT_SKIP, SLOT_SKIP]
    assert processed.num_real_views == 3 and processed.num_skipped_views == 2
    assert processed.dino_views.shape[0] == 3 and processed.convnext_views.shape[0] == 3
    assert processed.num_tokens == 779
    dense = process_image(torch.rand(3, 300, 900), AnyResConfig(use_skip_token=False))
    assert dense.num_real_views == 5 and dense.num_skipped_views == 0 and dense.num_tokens == 1295


def test_pil_and_uint8_inputs_agree() -> None:
    from PIL import Image

    pixels = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    pil = Image.fromarray(pixels.permute(1, 2, 0).numpy(), mode="RGB")
    a = process_image(pil)
    b = process_image(pixels)
    assert torch.equal(a.dino_views, b.dino_views)
    assert a.slots == b.slots == [SLOT_VIEW] * 5  # 70 x 50 -> 448 x 320: no empty cell


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        process_image(torch.rand(4, 10, 10))
    with pytest.raises(ValueError):
        process_image("not an image")
    with pytest.raises(ValueError):
        AnyResConfig(convnext_view_size=250)
