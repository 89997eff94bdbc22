"""Packed rows: mask and positions on hand cases; packed vs one-sample-per-row loss and gradients.

The reference for the equality tests is the model's own padded layout (every sample in a row of
its own, plain causal attention, positions 0..L-1), which tests/model/test_sphinx.py checks
against a loop-built full-logits reference; packing must change nothing but where samples sit.
"""

from __future__ import annotations

import pytest
import torch

from sphinxx.model.anyres import AnyResConfig, process_image
from sphinxx.model.flavors import build_sphinx
from sphinxx.model.packing import (
    flash_varlen_available,
    packed_positions,
    segment_attention,
    segment_layout,
    varlen_layout,
)
from sphinxx.model.sphinx import SphinxX, collate
from tests.model.test_sphinx import make_sample

TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512)


def test_positions_restart_per_sample_and_padding_is_its_own_segment() -> None:
    segments = [[3, 2], [4]]  # row 0: samples of 3 and 2, one pad; row 1: 4 and two pads
    assert packed_positions(segments, 6, "cpu").tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    assert segment_layout(segments, 6).spans == (((0, 3), (3, 2)), ((0, 4),))
    with pytest.raises(ValueError, match="do not fit"):
        packed_positions([[4, 3]], 6, "cpu")


def _block_causal_mask(segments: list[list[int]], width: int) -> torch.Tensor:
    """[B, 1, S, S]: query i reads key j iff both lie in one sample and j <= i (padding: itself only)."""
    mask = torch.zeros(len(segments), 1, width, width, dtype=torch.bool)
    for b, segs in enumerate(segments):
        start = 0
        for n in segs:
            for i in range(start, start + n):
                mask[b, 0, i, start : i + 1] = True
            start += n
        for i in range(start, width):
            mask[b, 0, i, i] = True
    return mask


def test_hand_built_mask() -> None:
    assert _block_causal_mask([[2, 3]], 6)[0, 0].int().tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],  # the second sample starts: it reads nothing of the first
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],  # padding
    ]


def test_segment_attention_equals_sdpa_with_the_block_diagonal_mask() -> None:
    gen = torch.Generator().manual_seed(0)
    segments, width = [[5, 3, 1], [7], [2, 2, 2, 2]], 9
    q = torch.randn(3, 4, width, 8, generator=gen)
    k, v = torch.randn(2, 3, 2, width, 8, generator=gen)  # grouped-query: 2 KV heads for 4
    got = segment_attention(q, k, v, segment_layout(segments, width), gqa=True)
    mask = _block_causal_mask(segments, width)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    for b, segs in enumerate(segments):  # real positions agree; padding (unread) is zero here
        used = sum(segs)
        torch.testing.assert_close(got[b, :, :used], want[b, :, :used], rtol=1e-5, atol=1e-6)
        assert not got[b, :, used:].any()


def test_varlen_layout_lays_every_segment_end_to_end() -> None:
    layout = varlen_layout([[3, 2], [4]], 6, "cpu")
    assert layout.cu_seqlens.tolist() == [0, 3, 5, 6, 10, 12]
    assert layout.cu_seqlens.dtype == torch.int32 and layout.max_seqlen == 4
    assert not flash_varlen_available(torch.device("cpu"), torch.bfloat16)  # CPU: SDPA with the mask


def _samples(seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    config = AnyResConfig()
    return [
        make_sample(gen, 12, 6, process_image(torch.rand(3, 320, 320, generator=gen), config)),  # 5 views
        make_sample(gen, 20, 9),  # text only
        make_sample(gen, 9, 3, process_image(torch.rand(3, 100, 300, generator=gen), config)),  # 2 SKIP
        make_sample(gen, 30, 12),
        make_sample(gen, 7, 2),
    ]


def _loss_and_grads(model: SphinxX, batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.ce_sum.detach(), out.aux_loss.detach(), grads


@pytest.mark.parametrize("flavor", ["debug", "debug-moe"])
def test_packed_rows_give_the_loss_and_gradients_of_one_sample_per_row(flavor: str) -> None:
    torch.manual_seed(0)
    extra = {"moe_ffn_dim": 32} if flavor == "debug-moe" else {"ffn_dim": 128}
    model = build_sphinx(flavor, **TINY, **extra).float()
    samples = _samples(3)
    padded = collate(samples)
    packed = collate(samples, rows=[0, 1, 0, 1, 2])  # rows of 2, 2 and 1 samples
    h, _, lengths, segments = model.assemble(packed)
    assert h.shape[0] == 3 and [len(s) for s in segments] == [2, 2, 1]
    assert lengths == [sum(s) for s in segments]

    ce_pad, aux_pad, grads_pad = _loss_and_grads(model, padded)
    ce_pack, aux_pack, grads_pack = _loss_and_grads(model, packed)
    assert padded.num_targets == packed.num_targets
    torch.testing.assert_close(ce_pack, ce_pad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(aux_pack, aux_pad, rtol=1e-5, atol=1e-6)
    if flavor == "debug-moe":
        assert float(aux_pad) > 0
    assert grads_pad.keys() == grads_pack.keys() and "start_img" in grads_pad
    for name, grad in grads_pad.items():
        torch.testing.assert_close(grads_pack[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_packing_without_a_mask_would_differ() -> None:
    """The block-diagonal mask is what makes packing exact: plain causal attention over the same
    packed rows lets a sample read the one before it, and the loss changes."""
    torch.manual_seed(0)
    model = build_sphinx("debug", **TINY, ffn_dim=128).float()
    samples = _samples(4)
    with torch.no_grad():
        alone = model(collate(samples)).ce_sum
        h, targets, _, _ = model.assemble(collate(samples, rows=[0, 0, 0, 1, 1]))
        hidden, _ = model.llm.forward_hidden(h)  # no segments: plain causal over each packed row
        mask = targets != -100
        leaked = torch.nn.functional.cross_entropy(
            model.llm.output(hidden[mask]).float(), targets[mask], reduction="sum"
        )
    assert not torch.allclose(leaked, alone, rtol=1e-4)


def test_collate_refuses_rows_with_gaps() -> None:
    samples = _samples(5)[:2]
    with pytest.raises(ValueError, match="rows"):
        collate(samples, rows=[0, 2])
    with pytest.raises(ValueError, match="rows"):
        collate(samples, rows=[0])
