"""Building the model a run trains: SPHINX-X from the run config, on the worker's device.

The decoder is exactly what admission checked (`sphinxx.schema.run.run_decoder_args`: the
flavor with `model.overrides`, the EP size, the MoE kernel, the aux-loss weight), paired with the
flavor's vision towers and any-resolution layout. Weights are random (seeded, the same on every
rank) or loaded from the configured URIs; the towers are frozen (docs/training.md, "Training recipe").
Parallelism is applied afterwards, from outside (`engine`): the model stays single-device code.
"""

from __future__ import annotations

from typing import Any

import torch

from sphinxx.jobs.context import Worker
from sphinxx.schema.run import RunConfig


def model_args(cfg: RunConfig):
    """SphinxArgs of the run: the decoder admission checked (`run_decoder_args`) + towers + layout."""
    from sphinxx.model.flavors import get_sphinx_args
    from sphinxx.schema.run import run_decoder_args

    return get_sphinx_args(
        cfg.model.flavor, use_skip_token=cfg.model.use_skip_token, llm=run_decoder_args(cfg)
    )


def build_model(cfg: RunConfig, worker: Worker, staged: list[Any] | None = None):
    """SphinxX on the worker's device, weights random (seeded) or loaded from the configured URIs.

    Built on the meta device, then materialised on the worker's device in the training dtype
    (bf16 when the engine trains in bf16, `jobs.engine.uses_bf16`; else fp32) with this rank's
    share only (an expert-parallel rank holds its own experts), so no full fp32 copy ever exists
    on the host or the device. Parts without configured weights get their random init, the same
    on every rank (seeded); weight URIs are staged on the node first (`stage_inputs`), and their
    `StageReport`s appended to `staged`. Returns (model, ep_size).
    """
    from sphinxx.jobs.engine import uses_bf16
    from sphinxx.model.llm import apply_activation_checkpointing
    from sphinxx.model.sphinx import SphinxX

    args = model_args(cfg)
    ep_size = args.llm.ep_size
    local = stage_inputs(cfg, staged)  # before any allocation: a bad URI fails fast
    dtype = torch.bfloat16 if uses_bf16(cfg, worker) else torch.float32
    with torch.device("meta"):
        model = SphinxX(args)
    model.to(dtype=dtype)  # meta: no memory
    model.to_empty(device=worker.device)
    # Same seed on every rank: replicated params start equal without a broadcast. (Expert
    # slices differ per EP rank by construction; real runs load converted weights.)
    torch.manual_seed(cfg.train.seed)
    with torch.no_grad():  # what no weights are loaded into
        if "llm_weights" not in local:
            model.llm.init_weights()
        model.init_multimodal_weights()
        if "convnext_weights" not in local:
            model.vision.convnext.model.init_weights()
        if "dinov2_weights" not in local:
            model.vision.dinov2.model.init_weights()
    if "llm_weights" in local:
        from sphinxx.model.convert import load_llm_weights
        from sphinxx.schema.flavors import resolve

        family = resolve(cfg.model.flavor).hf_family
        load_llm_weights(local["llm_weights"], model.llm, family=family, ep_rank=worker.rank % ep_size)
    if "convnext_weights" in local or "dinov2_weights" in local:
        model.load_vision(local.get("convnext_weights"), local.get("dinov2_weights"))
    model.vision.requires_grad_(False)  # frozen towers (docs/training.md, "Training recipe")
    if cfg.model.activation_checkpointing or args.llm.activation_checkpointing:
        apply_activation_checkpointing(model.llm)
    return model, ep_size


WEIGHT_FIELDS = ("llm_weights", "convnext_weights", "dinov2_weights")


def _selectors() -> dict[str, Any]:
    from sphinxx.jobs.data.tokenizer import tokenizer_files
    from sphinxx.model.convert import checkpoint_files
    from sphinxx.model.vision import weight_files

    return {
        "llm_weights": checkpoint_files,
        "convnext_weights": weight_files,
        "dinov2_weights": weight_files,
        "tokenizer": lambda names: [n for n in tokenizer_files(names) if "/" not in n],
    }


def stage_bytes(cfg: RunConfig) -> int:
    """Bytes a node stages for this run (weights and tokenizer, `s3://` only): listings, no download.
    Raises StorageAccessError naming the field when an input is missing."""
    from sphinxx.storage import StorageOptions
    from sphinxx.storage.stage import planned_bytes

    options, select = StorageOptions(endpoint_url=cfg.storage.endpoint_url), _selectors()
    uris = {f"model.{name}": (name, getattr(cfg.model, name)) for name in WEIGHT_FIELDS}
    uris["data.tokenizer"] = ("tokenizer", cfg.data.tokenizer)
    return sum(
        planned_bytes(uri, select=select[key], options=options, what=field)
        for field, (key, uri) in uris.items()
        if uri
    )


def stage_inputs(cfg: RunConfig, staged: list[Any] | None = None) -> dict[str, str]:
    """Local paths of the configured weights: `s3://` URIs staged in the node's cache (once per
    node, `sphinxx.storage.stage`), local paths and `file://` as they are. Keyed by field name."""
    from sphinxx.storage import StorageOptions
    from sphinxx.storage.stage import stage

    options, select = StorageOptions(endpoint_url=cfg.storage.endpoint_url), _selectors()
    local = {}
    for name in WEIGHT_FIELDS:
        uri = getattr(cfg.model, name)
        if uri:
            report = stage(uri, select=select[name], options=options, what=f"model.{name}")
            local[name] = report.local_path
            if staged is not None:
                staged.append(report)
    return local


def check_vocab(data: Any, model: torch.nn.Module) -> None:
    """The tokenizer's ids must fit the model's embedding table (a user error, named as such)."""
    size = len(data.encoder.tokenizer)
    if size > model.args.llm.vocab_size:
        raise ValueError(
            f"the tokenizer has {size} ids but the model's vocabulary is {model.args.llm.vocab_size}; "
            "use the flavor's tokenizer or set model.overrides.vocab_size"
        )
