"""Model sizes (N of the scaling law, all trainable), the checkpoint's metrics, expert load, MFU."""

from __future__ import annotations

import pytest
import torch

from tests.jobs._tiny import TINY_MOE


def _model(flavor: str, *overrides: str):
    """The model the job builds for `flavor` (towers frozen), at the flavor's own size."""
    from sphinxx.jobs.context import Worker
    from sphinxx.schema.run import load_config
    from tests.jobs._tiny import run_model

    cfg = load_config(preset=flavor, overrides=["storage.uri=file:///tmp/unused", *overrides])
    return run_model(cfg, Worker())[0]


def _multimodal_params(model, tags: int) -> int:
    """Projector Linear(C_vision, d) with bias + LayerNorm(d), and `tags` learnable d-vectors."""
    dim, vision = model.args.llm.dim, model.args.vision.out_dim
    return (vision * dim + dim) + 2 * dim + tags * dim


@pytest.mark.parametrize("flavor", ["debug", "debug-moe"])
def test_scaling_params_is_the_flavors_n_plus_the_multimodal_parts(flavor: str) -> None:
    from sphinxx.jobs.metrics import scaling_params
    from sphinxx.schema.flavors import FLAVORS

    model = _model(flavor)
    spec = FLAVORS[flavor]
    assert scaling_params(model) == spec.scaling_params + _multimodal_params(model, tags=3)
    # Without skip tokens there is no skip token to train.
    plain = _model(flavor, "model.use_skip_token=false")
    assert scaling_params(plain) == spec.scaling_params + _multimodal_params(plain, tags=2)


def test_scaling_params_by_hand_for_moe() -> None:
    """Debug-moe's N from its shape: attention + norms + router fully, experts at top_k / E."""
    from sphinxx.jobs.metrics import scaling_params
    from sphinxx.schema.flavors import FLAVORS

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
    from sphinxx.jobs.progress import Peak

    flops = FlopModel(
        per_token=10.0,
        per_squared_length=2.0,
        per_image_token=4.0,
        per_view=100.0,
        peak=Peak(1000.0, "test", False),
    )
    stats = StepStats(0.0, 1.0, 1.0, 0.0, 5, tokens=20, samples=2, image_tokens=5, views=1, skipped_views=0,
                      squared_lengths=10**2 + 10**2)  # fmt: skip
    # (10 * 20 + 2 * 200 + 4 * 5 + 100 * 1) FLOPs in 0.5 s on 2 devices of 1000 FLOP/s.
    assert flops.step_flops(stats) == 720.0
    assert flops.mfu(stats, 0.5, 2) == pytest.approx(720 / 0.5 / 2000)
    assert flops.mfu_of_rate(720 / 0.5, 2) == flops.mfu(stats, 0.5, 2)


# ---------------------------------------------------------------------------- FLOPs of real batches


class _PlainEngine:
    """The three calls of a DeepSpeed engine over the model and torch AdamW (no DeepSpeed needed)."""

    def __init__(self, model):
        self.model = model
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def __call__(self, batch):
        return self.model(batch)

    def backward(self, loss, scale_wrt_gas: bool = True) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def zero_optimization(self) -> bool:
        return True  # so the loop reads the norm from get_global_grad_norm

    def get_global_grad_norm(self) -> float:
        return 0.0


def _known_group(model):
    """One micro-batch of three samples with known real lengths: text-only 5 and 9 positions, and
    an image on the 448 canvas with 3 real views and 2 skipped cells + 7 text positions
    (1 + 3 * 259 + 2 + 6 = 786 positions: BOS, the image block, the rest of the text)."""
    from sphinxx.jobs.data.collate import LoadedBatch
    from sphinxx.model.anyres import SLOT_SKIP, SLOT_VIEW, ProcessedImage
    from sphinxx.model.sphinx import SphinxSample, collate

    gen = torch.Generator().manual_seed(0)
    image = model.args.image

    def text(n: int) -> SphinxSample:
        tokens = torch.randint(5, 100, (n,), generator=gen)
        labels = tokens.clone()
        labels[: n // 2] = -100
        return SphinxSample(tokens=tokens, labels=labels)

    views = ProcessedImage(
        dino_views=torch.randn(3, 3, 224, 224, generator=gen),
        convnext_views=torch.randn(3, 3, image.convnext_view_size, image.convnext_view_size, generator=gen),
        slots=[SLOT_VIEW, SLOT_VIEW, SLOT_SKIP, SLOT_SKIP, SLOT_VIEW],
        content_size=(448, 200),
    )
    with_image = text(7)
    with_image.image = views
    rows = [text(5), text(9), with_image]
    batch = collate(rows, image=image)
    image_tokens = 3 * 259 + 2
    mb = LoadedBatch(0, 0, batch, samples=[(0, i) for i in range(3)], num_image_tokens=image_tokens,
                     num_targets=batch.num_targets)  # fmt: skip
    return [mb], [5, 9, 7 + image_tokens], image_tokens


def _decoder_params_by_hand(a) -> int:
    """N of 6N: a LLaMA decoder's matrices and norms without the embedding table, head included."""
    head_dim = a.dim // a.n_heads
    attention = 2 * a.dim * a.n_heads * head_dim + 2 * a.dim * a.n_kv_heads * head_dim
    per_layer = attention + 3 * a.dim * a.ffn_dim + 2 * a.dim
    return a.n_layers * per_layer + a.dim + a.vocab_size * a.dim


def test_step_flops_of_a_batch_with_known_lengths_by_hand() -> None:
    """The loop's own count of a real step (its `train_step` on the debug model) times the FLOP
    model equals 6 N per position + 12 L d T^2 per sequence + 4 P per image position + the
    towers' forward per view, with T the real lengths (not the configured seq_len)."""
    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.loop import train_step
    from sphinxx.jobs.metrics import flop_model

    model = _model("debug")
    a = model.args.llm
    group, lengths, image_tokens = _known_group(model)
    stats = train_step(_PlainEngine(model), model, group, Worker())
    assert (stats.tokens, stats.squared_lengths, stats.image_tokens) == (800, 25 + 81 + 786**2, image_tokens)
    assert (stats.views, stats.skipped_views) == (3, 2)
    flops = flop_model(model, "cpu")
    six_n = 6 * _decoder_params_by_hand(a)
    attention = 12 * a.n_layers * a.dim
    projector = 4 * _multimodal_params(model, tags=0)
    head = 6 * model.llm.output.weight.numel()  # applied at the targets only
    assert (flops.per_token, flops.per_target) == (six_n - head, head)
    assert (flops.per_squared_length, flops.per_image_token) == (attention, projector)
    expected = (
        sum((six_n - head) * t + attention * t * t for t in lengths)
        + head * stats.targets
        + projector * image_tokens
        + 3 * flops.per_view
    )
    assert flops.step_flops(stats) == expected
    # At the configured seq_len every position would be credited 12 L d * 2048 of attention.
    assert flops.step_flops(stats) < sum(six_n + attention * model.args.llm.max_seq_len for _ in range(800))


def test_mfu_on_cpu_of_a_measured_step_is_at_most_one_and_labelled_an_estimate() -> None:
    """A real forward + backward + AdamW step of the debug model on a realistic batch, timed on this
    CPU, against the CPU peak the job measures: a ratio in (0, 1], with a peak marked as estimated."""
    import time

    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.loop import train_step
    from sphinxx.jobs.metrics import flop_model

    model = _model("debug")
    engine = _PlainEngine(model)
    group, _, _ = _known_group(model)
    train_step(engine, model, group, Worker())  # warm-up: first-call allocations
    start = time.perf_counter()
    stats = train_step(engine, model, group, Worker())
    seconds = time.perf_counter() - start
    flops = flop_model(model, "cpu")
    assert flops.peak.estimate and flops.peak.source.startswith("estimate: fp32 matmul measured on CPU")
    assert 0.0 < flops.mfu(stats, seconds, 1) <= 1.0


def test_host_counts_are_reduced_where_the_backend_reduces(monkeypatch) -> None:
    """NCCL reduces device tensors only: the loop's host-side counts go to the current GPU and back."""
    import torch.distributed as dist

    from sphinxx.jobs.metrics import all_reduce_host, reduction_device

    t = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert all_reduce_host(t) is t  # no process group: nothing to do
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert reduction_device() == torch.device("cuda", 3)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    assert reduction_device() == torch.device("cpu")
