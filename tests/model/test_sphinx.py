"""SphinxX: sequence layout, labels, loss against a full-logits reference, gradients, batching.

The reference builds every sequence with an explicit per-sample loop straight from the spec
(docs/model.md), runs the LM head at every position and calls
F.cross_entropy with ignore_index; it shares only the submodules (decoder, towers, projector,
tags) with the code under test, never its assembly or masking.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sphinxx.model.anyres import SLOT_SKIP, SLOT_VIEW, AnyResConfig, process_image
from sphinxx.model.flavors import build_sphinx, get_sphinx_args
from sphinxx.model.sphinx import IGNORE_INDEX, SphinxSample, SphinxX, collate

SMALL_LLM = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=512)


@pytest.fixture(scope="module")
def model() -> SphinxX:
    torch.manual_seed(0)
    return build_sphinx("debug", **SMALL_LLM).eval()


def make_sample(gen: torch.Generator, length: int, answer_from: int, image=None) -> SphinxSample:
    tokens = torch.randint(1, SMALL_LLM["vocab_size"], (length,), generator=gen)
    labels = torch.full((length,), IGNORE_INDEX)
    labels[answer_from:] = tokens[answer_from:]
    return SphinxSample(tokens=tokens, labels=labels, image=image)


@pytest.fixture(scope="module")
def mixed_batch():
    gen = torch.Generator().manual_seed(1)
    config = AnyResConfig()
    samples = [
        make_sample(gen, 12, 6, process_image(torch.rand(3, 320, 320, generator=gen), config)),  # 5 views
        make_sample(
            gen, 20, 9, process_image(torch.rand(3, 100, 300, generator=gen), config)
        ),  # 3:1 -> 2 SKIP
        make_sample(gen, 16, 4),  # text only
    ]
    return samples, collate(samples, pad_id=0)


def reference_loss(model: SphinxX, samples: list[SphinxSample]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Loop-built sequences, full logits, F.cross_entropy(ignore_index=-100)."""
    sequences, label_rows = [], []
    for s in samples:
        emb = model.llm.embed(torch.as_tensor(s.tokens).view(1, -1))[0]
        pieces, labels = [emb[:1]], [IGNORE_INDEX]
        if s.image is not None:
            fused = model.vision(s.image.convnext_views, s.image.dino_views)
            views = model.projector(fused)  # [V, 257, d]
            v = 0
            for slot in s.image.slots:
                if slot == SLOT_VIEW:
                    pieces += [model.start_img[0], views[v], model.end_img[0]]
                    labels += [IGNORE_INDEX] * 259
                    v += 1
                else:
                    pieces.append(model.skip_token[0])
                    labels.append(IGNORE_INDEX)
        pieces.append(emb[1:])
        labels += list(torch.as_tensor(s.labels)[1:].tolist())
        sequences.append(torch.cat(pieces))
        label_rows.append(torch.tensor(labels))
    length = max(len(r) for r in label_rows)
    h = torch.stack([F.pad(x, (0, 0, 0, length - x.shape[0])) for x in sequences])
    labels = torch.stack([F.pad(r, (0, length - len(r)), value=IGNORE_INDEX) for r in label_rows])
    hidden, _ = model.llm.forward_hidden(h)
    logits = model.llm.output(hidden)  # every position
    shift_logits, shift_labels = logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
    mean = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return mean, total, int((shift_labels != IGNORE_INDEX).sum())


def test_loss_equals_full_logits_reference(model, mixed_batch) -> None:
    samples, batch = mixed_batch
    with torch.no_grad():
        out = model(batch)
        mean, total, count = reference_loss(model, samples)
    assert out.num_targets == count == batch.num_targets == 6 + 11 + 12
    torch.testing.assert_close(out.ce_sum, total, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.loss, mean, rtol=1e-5, atol=1e-5)
    assert float(out.aux_loss) == 0.0  # dense decoder


def test_layout_of_one_sample(model) -> None:
    gen = torch.Generator().manual_seed(2)
    image = process_image(torch.rand(3, 200, 400, generator=gen))  # 2:1 -> global, TL, TR, SKIP, SKIP
    assert image.slots == [SLOT_VIEW, SLOT_VIEW, SLOT_VIEW, SLOT_SKIP, SLOT_SKIP]
    sample = make_sample(gen, 10, 5, image)
    batch = collate([sample])
    with torch.no_grad():
        h, targets, lengths, _ = model.assemble(batch)
        tokens = model.projector(model.vision(image.convnext_views, image.dino_views))
        text = model.llm.embed(batch.tokens)[0]
    assert h.shape == (1, 779 + 10, SMALL_LLM["dim"]) and lengths == [779 + 10]
    assert torch.equal(h[0, 0], text[0])  # BOS first
    for v in range(3):  # [start, 257 tokens, end] per real view, global first
        base = 1 + 259 * v
        assert torch.equal(h[0, base], model.start_img[0, 0])
        torch.testing.assert_close(h[0, base + 1 : base + 258], tokens[v])
        assert torch.equal(h[0, base + 258], model.end_img[0, 0])
    assert torch.equal(h[0, 778], model.skip_token[0, 0]) and torch.equal(h[0, 779], model.skip_token[0, 0])
    torch.testing.assert_close(h[0, 780:], text[1:])  # text right after the image block
    # Targets: position t predicts token t + 1, only the answer tokens 5..9 (positions 779+4..779+8).
    want = torch.full((789,), IGNORE_INDEX)
    want[783:788] = batch.tokens[0, 5:10]
    assert torch.equal(targets[0], want)


def test_gradients_reach_only_trainable_parts(model, mixed_batch) -> None:
    _, batch = mixed_batch
    model.zero_grad(set_to_none=True)
    model(batch).loss.backward()
    for name in ("start_img", "end_img", "skip_token", "projector.proj.weight", "projector.norm.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in model.llm.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.vision.parameters())
    model.zero_grad(set_to_none=True)


def test_samples_are_independent_of_their_batch(model, mixed_batch) -> None:
    samples, batch = mixed_batch
    with torch.no_grad():
        together = model.llm.forward_hidden(model.assemble(batch)[0])[0]
        for i, sample in enumerate(samples):
            alone = model.llm.forward_hidden(model.assemble(collate([sample]))[0])[0]
            length = alone.shape[1]
            torch.testing.assert_close(together[i, :length], alone[0], atol=1e-5, rtol=1e-5)
    assert batch.sequence_lengths() == [1295 + 12, 779 + 20, 16]


def test_assemble_returns_the_lengths_and_keeps_nothing_on_the_model(model, mixed_batch) -> None:
    _, batch = mixed_batch
    before = dict(vars(model))
    with torch.no_grad():
        h, _, lengths, _ = model.assemble(batch)
    assert vars(model) == before  # no state carried from one call to the next
    assert lengths == batch.sequence_lengths()
    mask = model.token_mask(lengths, h.shape[1], h.device)
    assert mask.shape == h.shape[:2] and mask.sum(1).tolist() == lengths


def test_real_views_do_not_depend_on_padded_cell_pixels() -> None:
    torch.manual_seed(0)
    model = build_sphinx("debug", use_skip_token=False, **SMALL_LLM).eval()
    assert model.skip_token is None
    image = process_image(torch.rand(3, 150, 450), model.args.image)  # 3:1, cells 2 and 3 padded
    assert image.num_real_views == 5 and image.num_tokens == 1295
    noisy_dino, noisy_conv = image.dino_views.clone(), image.convnext_views.clone()
    noisy_dino[3:] = torch.randn_like(noisy_dino[3:])
    noisy_conv[3:] = torch.randn_like(noisy_conv[3:])
    with torch.no_grad():
        clean = model.encode_views(image.convnext_views, image.dino_views)
        noisy = model.encode_views(noisy_conv, noisy_dino)
    torch.testing.assert_close(clean[:3], noisy[:3], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(clean[3:], noisy[3:])


def test_skip_slots_need_a_skip_model() -> None:
    model = build_sphinx("debug", use_skip_token=False, **SMALL_LLM)
    image = process_image(torch.rand(3, 100, 400))  # processed with skipping
    batch = collate([make_sample(torch.Generator().manual_seed(0), 8, 4, image)])
    with pytest.raises(ValueError, match="use_skip_token=False"):
        model(batch)


def test_text_only_batch_matches_plain_decoder(model) -> None:
    gen = torch.Generator().manual_seed(3)
    samples = [make_sample(gen, 9, 3), make_sample(gen, 14, 7)]
    batch = collate(samples, image=model.args.image)
    assert batch.image_slots.shape == (2, 5) and (batch.image_slots == -1).all()
    with torch.no_grad():
        out = model(batch)
        logits = model.llm(batch.tokens)
    labels = batch.labels[:, 1:].flatten()
    want = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-5)


def test_no_targets_gives_zero_loss_with_graph(model) -> None:
    gen = torch.Generator().manual_seed(4)
    sample = make_sample(gen, 6, 6)  # no answer tokens
    out = model(collate([sample]))
    assert out.num_targets == 0 and float(out.loss.detach()) == 0.0 and out.loss.requires_grad


def test_moe_flavor_adds_aux_loss() -> None:
    torch.manual_seed(0)
    model = build_sphinx(
        "debug-moe", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, moe_ffn_dim=32, vocab_size=512
    )
    gen = torch.Generator().manual_seed(5)
    batch = collate([make_sample(gen, 12, 4, process_image(torch.rand(3, 64, 64)))])
    out = model(batch)
    assert float(out.aux_loss.detach()) > 0
    torch.testing.assert_close(out.loss, out.ce_sum / out.num_targets + out.aux_loss)


def test_collate_validates() -> None:
    gen = torch.Generator().manual_seed(6)
    bad = make_sample(gen, 5, 0)  # labels[0] is a target: nothing can predict BOS
    with pytest.raises(ValueError, match="BOS"):
        collate([bad])
    sample = make_sample(gen, 5, 2, process_image(torch.rand(3, 64, 64)))
    batch = collate([sample])
    batch.dino_pixels = batch.dino_pixels[:2]
    model = build_sphinx("debug", **SMALL_LLM)
    with pytest.raises(ValueError, match="real views"):
        model(batch)


def test_args_and_token_counts() -> None:
    args = get_sphinx_args("sphinx-plus-2k")
    assert args.image.canvas == 672 and args.llm.dim == 5120
    model = build_sphinx("debug", **SMALL_LLM)
    assert model.num_visual_tokens(448, 448) == 1295 and model.num_visual_tokens(1000, 500) == 779
    assert model.projector.proj.in_features == 64 and model.start_img.shape == (1, 1, 64)
    assert not any(k.startswith("vision.") for k in model.trainable_state_dict())
    assert all(
        0 <= float(t.detach().min()) and float(t.detach().max()) < 1
        for t in (model.start_img, model.end_img, model.skip_token)
    )


def test_meta_build_then_load_matches_eager() -> None:
    """The trainer's path: build on meta, to_empty, load weights -> same model as an eager build."""
    torch.manual_seed(0)
    eager = build_sphinx("debug", **SMALL_LLM)
    lazy = build_sphinx("debug", device="meta", **SMALL_LLM)
    assert all(p.is_meta for p in lazy.parameters())
    lazy.to_empty(device="cpu")
    lazy.load_state_dict(eager.state_dict())
    gen = torch.Generator().manual_seed(7)
    batch = collate([make_sample(gen, 10, 4, process_image(torch.rand(3, 90, 200, generator=gen)))])
    with torch.no_grad():
        torch.testing.assert_close(lazy(batch).loss, eager(batch).loss, rtol=0, atol=0)


def test_moe_aux_loss_ignores_right_padding() -> None:
    """The load-balancing loss counts only real positions (docs/moe.md, "Load-balancing loss"),
    computed independently."""
    torch.manual_seed(0)
    model = build_sphinx(
        "debug-moe", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, moe_ffn_dim=32, vocab_size=512
    )
    gen = torch.Generator().manual_seed(7)
    long = make_sample(gen, 40, 10, process_image(torch.rand(3, 64, 128)))
    short = make_sample(gen, 6, 3)  # text-only and short: most of its row is right padding
    batch = collate([long, short])
    inputs: list[torch.Tensor] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: inputs.append(args[0].detach()))
        for m in model.modules()
        if type(m).__name__ == "MoE"
    ]
    out = model(batch)
    for h in hooks:
        h.remove()
    real = model.token_mask(model.assemble(batch).lengths, inputs[0].shape[1], inputs[0].device)
    assert not bool(real.all()), "the batch must contain right padding for this test to mean anything"
    expected = torch.zeros(())
    moe_layers = [m for m in model.modules() if type(m).__name__ == "MoE"]
    for layer, x in zip(moe_layers, inputs, strict=True):
        tokens = x[real]  # [T_real, H]
        probs = torch.softmax((tokens @ layer.router.layer.weight.T).float(), dim=-1)
        top = probs.topk(layer.args.top_k, dim=-1).indices
        counts = torch.bincount(top.flatten(), minlength=layer.args.num_experts).float()
        num_experts, k = layer.args.num_experts, layer.args.top_k
        expected = expected + num_experts / (tokens.shape[0] * k) * (counts * probs.mean(0)).sum()
    expected = layer.args.aux_loss_coef * expected / len(moe_layers)
    torch.testing.assert_close(out.aux_loss.detach().float(), expected, rtol=1e-5, atol=1e-7)
