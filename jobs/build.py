"""Building the model a run trains: SPHINX-X from the run config, on the worker's device.

The decoder is exactly what admission checked (`sphinxx.jobs.schema.run.run_decoder_args`: the
flavor with `model.overrides`, the EP size, the MoE kernel, the aux-loss weight), paired with the
flavor's vision towers and any-resolution layout. Weights are random (seeded, the same on every
rank) or loaded from the configured URIs; the towers are frozen (docs/training.md, "Training recipe").
Parallelism is applied afterwards, from outside (`engine`): the model stays single-device code.
"""

from __future__ import annotations

from typing import Any

import torch

from sphinxx.jobs.context import Worker
from sphinxx.jobs.schema.run import RunConfig


def model_args(cfg: RunConfig):
    """SphinxArgs of the run: the decoder admission checked (`run_decoder_args`) + towers + layout."""
    from sphinxx.jobs.schema.run import run_decoder_args
    from sphinxx.model.flavors import get_sphinx_args

    return get_sphinx_args(cfg.model.flavor, use_skip_token=cfg.model.use_skip_token, llm=run_decoder_args(cfg))


def build_model(cfg: RunConfig, worker: Worker):
    """SphinxX on the worker's device, weights random (seeded) or loaded from the configured URIs."""
    from sphinxx.model.llm import apply_activation_checkpointing
    from sphinxx.model.sphinx import SphinxX

    args = model_args(cfg)
    ep_size = args.llm.ep_size
    # Same seed on every rank: replicated params start equal without a broadcast. (Expert
    # slices differ per EP rank by construction; real runs load converted weights.)
    torch.manual_seed(cfg.train.seed)
    # Built on the worker's device: random init of billions of parameters takes seconds on a GPU
    # and minutes on the host (tinyllama-1.1b with its towers: 150 s on 2 cores), and the host
    # never holds a copy. Loaded weights are copied in from the host below.
    with torch.device(worker.device):
        model = SphinxX(args)
    if cfg.model.llm_weights:
        from sphinxx.model.convert import load_converted

        load_converted(cfg.model.llm_weights, model.llm, ep_rank=worker.rank % ep_size)
    if cfg.model.convnext_weights or cfg.model.dinov2_weights:
        model.load_vision(cfg.model.convnext_weights, cfg.model.dinov2_weights)
    model.vision.requires_grad_(False)  # frozen towers (docs/training.md, "Training recipe")
    if cfg.model.activation_checkpointing or args.llm.activation_checkpointing:
        apply_activation_checkpointing(model.llm)
    return model.to(worker.device), ep_size  # a no-op but for tensors a constructor put on the host


def check_vocab(data: Any, model: torch.nn.Module) -> None:
    """The tokenizer's ids must fit the model's embedding table (a user error, named as such)."""
    size = len(data.encoder.tokenizer)
    if size > model.args.llm.vocab_size:
        raise ValueError(
            f"the tokenizer has {size} ids but the model's vocabulary is {model.args.llm.vocab_size}; "
            "use the flavor's tokenizer or set model.overrides.vocab_size"
        )
