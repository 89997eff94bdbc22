"""A tiny model config and hand-made global batches for in-process tests of the loop's parts.

Shared by the checkpoint, loop and metrics tests: a 2-layer, 32-wide decoder (dense or with 4
experts), global batches of 4 random samples with answer-only targets, dealt to ranks as the
elastic sampler deals them. No data pipeline, no Ray.
"""

from __future__ import annotations

import torch

GLOBAL_BATCH, MICRO, SEQ, VOCAB = 4, 1, 24, 97
TINY = {"n_layers": 2, "dim": 32, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 64, "vocab_size": VOCAB}
TINY_MOE = {**TINY, "num_experts": 4, "top_k": 2, "moe_ffn_dim": 16}


def tiny_run_config(flavor: str, zero_stage: int, ep_size: int, storage: str):
    """A checked RunConfig of `flavor` shrunk to TINY / TINY_MOE."""
    from sphinxx.schema.run import load_config

    return load_config(
        preset=flavor,
        data={"model": {"overrides": TINY_MOE if flavor == "debug-moe" else TINY}},
        overrides=[
            f"storage.uri={storage}",
            "run_id=ckpt-test",
            f"parallel.zero_stage={zero_stage}",
            f"parallel.ep_size={ep_size}",
            f"parallel.min_workers={ep_size}",
            f"parallel.max_workers={ep_size}",
            f"train.global_batch={GLOBAL_BATCH}",
            f"train.micro_batch={MICRO}",
            "train.lr=0.01",
            "train.grad_clip=1.0",
            "train.weight_decay=0.1",
            "data.seq_len=64",
        ],
    )


def rank_group(step: int, rank: int, world: int):
    """This rank's micro-batches of global batch `step`: slot a*W + r as the elastic sampler deals."""
    from sphinxx.jobs.data.collate import LoadedBatch
    from sphinxx.model.sphinx import SphinxSample, collate

    gen = torch.Generator().manual_seed(1000 + step)
    rows = []
    for _ in range(GLOBAL_BATCH):
        tokens = torch.randint(1, VOCAB, (SEQ,), generator=gen)
        labels = tokens.clone()
        labels[: SEQ // 2] = -100  # answer-only targets, as the template makes them
        rows.append(SphinxSample(tokens=tokens, labels=labels))
    group = []
    for a in range(GLOBAL_BATCH // (MICRO * world)):
        chunk = rows[(a * world + rank) * MICRO : (a * world + rank + 1) * MICRO]
        batch = collate(chunk)
        samples = [(0, i) for i in range(len(chunk))]
        group.append(LoadedBatch(step, a, batch, samples=samples, num_targets=batch.num_targets))
    return group


def run_model(cfg, worker, staged=None):
    """The model a run trains, built as the job's `loop.build_parts` builds it: from the `model`
    section and the decoder admission checked (returns (model, ep_size))."""
    from sphinxx.jobs.build import build_model
    from sphinxx.jobs.stores import storage_options
    from sphinxx.schema.run import run_decoder_args

    return build_model(
        cfg.model, run_decoder_args(cfg), worker,
        seed=cfg.train.seed, precision=cfg.train.precision, options=storage_options(cfg.storage),
        staged=staged,
    )  # fmt: skip


def run_engine(model, cfg, worker, accum: int):
    """DeepSpeed around `model` from the run's `train` and `parallel` sections (as the job builds it)."""
    from sphinxx.jobs.engine import build_engine

    return build_engine(model, cfg.train, cfg.parallel, worker, accum)


def run_data(cfg, rank: int = 0, world_size: int = 1, **kwargs):
    """The run's DataStream of rank `rank` (as `loop.build_parts` builds it)."""
    from sphinxx.jobs.data.loader import build_data

    return build_data(
        cfg.data,
        cfg.train,
        use_skip_token=cfg.model.use_skip_token,
        rank=rank,
        world_size=world_size,
        **kwargs,
    )
