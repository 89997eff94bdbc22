"""Model sizes (N of the scaling law, all trainable), the checkpoint's metrics, expert load, MFU."""

from __future__ import annotations

import pytest
import torch

from tests.jobs._tiny import TINY_MOE


def _model(flavor: str, *overrides: str):
    """The model the job builds for `flavor` (towers frozen), at the flavor's own size."""
    from sphinxx.jobs.build import build_model
    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.schema.run import load_config

    cfg = load_config(preset=flavor, overrides=["storage.uri=file:///tmp/unused", *overrides])
    return build_model(cfg, Worker())[0]


def _multimodal_params(model, tags: int) -> int:
    """Projector Linear(C_vision, d) with bias + LayerNorm(d), and `tags` learnable d-vectors."""
    dim, vision = model.args.llm.dim, model.args.vision.out_dim
    return (vision * dim + dim) + 2 * dim + tags * dim


@pytest.mark.parametrize("flavor", ["debug", "debug-moe"])
def test_scaling_params_is_the_flavors_n_plus_the_multimodal_parts(flavor: str) -> None:
    from sphinxx.jobs.metrics import scaling_params
    from sphinxx.jobs.schema.flavors import FLAVORS

    model = _model(flavor)
    spec = FLAVORS[flavor]
    assert scaling_params(model) == spec.scaling_params + _multimodal_params(model, tags=3)
    # Without skip tokens there is no skip token to train.
    plain = _model(flavor, "model.use_skip_token=false")
    assert scaling_params(plain) == spec.scaling_params + _multimodal_params(plain, tags=2)


def test_scaling_params_by_hand_for_moe() -> None:
    """Debug-moe's N from its shape: attention + norms + router fully, experts at top_k / E."""
    from sphinxx.jobs.metrics import scaling_params
    from sphinxx.jobs.schema.flavors import FLAVORS

    model = _model("debug-moe")
    a = FLAVORS["debug-moe"].llm
    head_dim = a.dim // a.n_heads
    attention = a.dim * a.n_heads * head_dim * 2 + a.dim * a.n_kv_heads * head_dim * 2
    experts = 3 * a.num_experts * a.moe_ffn_dim * a.dim * a.top_k // a.num_experts
    per_layer = attention + a.dim * a.num_experts + experts + 2 * a.dim  # + router + 2 RMSNorms
    decoder = a.n_layers * per_layer + a.dim  # + final norm
    assert scaling_params(model) == decoder + _multimodal_params(model, tags=3)


def test_sizes_count_every_expert_not_this_ranks_slice() -> None:
    """An EP rank holds num_experts / ep_size experts; N and the total are of the whole model."""
    from sphinxx.jobs.metrics import model_sizes
    from sphinxx.model.flavors import build_sphinx

    full = build_sphinx("debug-moe", **TINY_MOE)
    sliced = build_sphinx("debug-moe", **TINY_MOE, ep_size=2)
    for m in (full, sliced):
        m.vision.requires_grad_(False)
    local = sum(p.numel() for p in sliced.parameters() if p.requires_grad)
    sizes = model_sizes(sliced)
    assert sizes == model_sizes(full) and sizes["num_params_total"] > local


def test_total_counts_every_trainable_parameter_and_n_leaves_out_embedding_and_head() -> None:
    from sphinxx.jobs.metrics import model_sizes

    model = _model("debug")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    llm = model.llm
    sizes = model_sizes(model)
    assert sizes["num_params_total"] == trainable
    assert sizes["num_params"] == trainable - llm.tok_embeddings.weight.numel() - llm.output.weight.numel()


def test_checkpoint_metrics_reach_the_manifest(tmp_path) -> None:
    """What the loop passes to `Checkpointer.save` is what `manifest.metrics` holds, at every commit."""
    from sphinxx.jobs.checkpoint import Checkpointer, RunState
    from sphinxx.jobs.metrics import checkpoint_metrics, model_sizes
    from sphinxx.model.flavors import build_sphinx
    from sphinxx.storage import CheckpointStore

    model = build_sphinx("debug-moe", **TINY_MOE)
    model.vision.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    store = CheckpointStore(tmp_path.as_uri(), "fit")
    ckpt = Checkpointer(store, model, optimizer, 0, 1, skip_prefixes=("vision.",))
    sizes = model_sizes(model)
    for step, tokens in ((1, 1000), (2, 2100)):
        metrics = checkpoint_metrics(2.5 / step, tokens, sizes)
        ckpt.save(RunState(step, {}, {}, tokens_seen=tokens), {}, metrics, final=step == 2)
    for step, tokens in ((1, 1000), (2, 2100)):
        saved = dict(store.get(step).manifest.metrics)
        assert saved == {
            "loss": 2.5 / step,
            "tokens_seen": tokens,
            "num_params": sizes["num_params"],
            "num_params_total": sizes["num_params_total"],
        }
    assert store.latest().manifest.metadata.final


def test_expert_load_shares_and_imbalance() -> None:
    from sphinxx.jobs.metrics import expert_load

    layer = torch.nn.Module()
    layer.tokens_per_expert = torch.tensor([3.0, 1.0])
    model = torch.nn.Sequential(layer)
    out = expert_load(model)
    assert out == {"moe/expert0_share": 0.75, "moe/expert1_share": 0.25, "moe/imbalance": 1.5}
    assert expert_load(torch.nn.Linear(2, 2)) == {}


def test_mfu_is_achieved_over_peak_flops_of_the_world() -> None:
    from sphinxx.jobs.metrics import FlopModel, StepStats

    flops = FlopModel(per_token=10.0, per_image_token=4.0, per_view=100.0, peak=1000.0)
    stats = StepStats(0.0, 1.0, 1.0, 0.0, 5, tokens=20, samples=2, image_tokens=5, views=1, skipped_views=0)
    # (10 * 20 + 4 * 5 + 100 * 1) FLOPs in 0.5 s on 2 devices of 1000 FLOP/s.
    assert flops.mfu(stats, 0.5, 2) == pytest.approx(640 / 2000)
