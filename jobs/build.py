"""Building the model a run trains: SPHINX-X from the run's `model` section and its decoder.

The decoder is exactly what admission checked (`sphinxx.schema.run.run_decoder_args`: the
flavor with `model.overrides`, the EP size, the MoE kernel, the aux-loss weight; the caller
resolves it from the run config and hands it in), paired with the flavor's vision towers and
any-resolution layout. Weights are random (seeded, the same on every rank) or loaded from the
section's URIs; the towers are frozen (docs/training.md, "Training recipe"). Parallelism is applied
afterwards, from outside (`engine`): the model stays single-device code.
"""

from __future__ import annotations

from typing import Any

import torch

from sphinxx.jobs.context import Worker
from sphinxx.jobs.data.tokenizer import tokenizer_files
from sphinxx.jobs.engine import uses_bf16
from sphinxx.model.convert import checkpoint_files, load_llm_weights
from sphinxx.model.flavors import get_sphinx_args
from sphinxx.model.llm import apply_activation_checkpointing
from sphinxx.model.sphinx import SphinxArgs, SphinxX
from sphinxx.model.vision import weight_files
from sphinxx.schema.decoder import ModelArgs
from sphinxx.schema.flavors import resolve
from sphinxx.schema.run import ModelConfig
from sphinxx.storage import StorageOptions
from sphinxx.storage.stage import StageReport, planned_bytes, stage

WEIGHT_FIELDS = ("llm_weights", "convnext_weights", "dinov2_weights")


def sphinx_args(model: ModelConfig, decoder: ModelArgs) -> SphinxArgs:
    """SphinxArgs of the run: `decoder` (`run_decoder_args`) + the flavor's towers and layout."""
    return get_sphinx_args(model.flavor, use_skip_token=model.use_skip_token, llm=decoder)


def build_model(
    model: ModelConfig,
    decoder: ModelArgs,
    worker: Worker,
    *,
    seed: int,
    precision: str = "fp32",
    options: StorageOptions | None = None,
    staged: list[StageReport] | None = None,
) -> tuple[SphinxX, int]:
    """SphinxX on the worker's device, weights random (seeded) or loaded from the section's URIs.

    Built on the meta device, then materialised on the worker's device in the training dtype
    (bf16 when the engine trains in bf16, `jobs.engine.uses_bf16` of `precision`; else fp32) with
    this rank's share only (an expert-parallel rank holds its own experts), so no full fp32 copy
    ever exists on the host or the device. Parts without configured weights get their random
    init, the same on every rank (`seed`); weight URIs are staged on the node first
    (`stage_inputs`, through `options`), and their `StageReport`s appended to `staged`.
    Returns (model, ep_size).
    """
    args = sphinx_args(model, decoder)
    local = stage_inputs(model, options, staged)  # before any allocation: a bad URI fails fast
    dtype = torch.bfloat16 if uses_bf16(precision, worker.device) else torch.float32
    with torch.device("meta"):
        sphinx = SphinxX(args)
    sphinx.to(dtype=dtype)  # meta: no memory
    sphinx.to_empty(device=worker.device)
    _init_weights(sphinx, local, seed)
    _load_weights(sphinx, local, model.flavor, ep_rank=worker.rank % decoder.ep_size)
    sphinx.vision.requires_grad_(False)  # frozen towers (docs/training.md, "Training recipe")
    if model.activation_checkpointing or decoder.activation_checkpointing:
        apply_activation_checkpointing(sphinx.llm)
    return sphinx, decoder.ep_size


def _init_weights(sphinx: SphinxX, local: dict[str, str], seed: int) -> None:
    """Random init of every part no weights are loaded into. Same seed on every rank: replicated
    params start equal without a broadcast (expert slices differ per EP rank by construction;
    real runs load converted weights)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        if "llm_weights" not in local:
            sphinx.llm.init_weights()
        sphinx.init_multimodal_weights()
        if "convnext_weights" not in local:
            sphinx.vision.convnext.model.init_weights()
        if "dinov2_weights" not in local:
            sphinx.vision.dinov2.model.init_weights()


def _load_weights(sphinx: SphinxX, local: dict[str, str], flavor: str, ep_rank: int) -> None:
    """The staged weights: the decoder (this EP rank's experts) and the vision towers."""
    if "llm_weights" in local:
        family = resolve(flavor).hf_family
        load_llm_weights(local["llm_weights"], sphinx.llm, family=family, ep_rank=ep_rank)
    if "convnext_weights" in local or "dinov2_weights" in local:
        sphinx.load_vision(local.get("convnext_weights"), local.get("dinov2_weights"))


def loaded_tower_prefixes(model: ModelConfig) -> tuple[str, ...]:
    """Parameter prefixes of the vision towers loaded from URIs: frozen and not written into
    checkpoints (the URI is their copy; a resume loads them from it again)."""
    skip = ("vision.convnext.",) if model.convnext_weights else ()
    return skip + (("vision.dinov2.",) if model.dinov2_weights else ())


def _selectors() -> dict[str, Any]:
    return {
        "llm_weights": checkpoint_files,
        "convnext_weights": weight_files,
        "dinov2_weights": weight_files,
        "tokenizer": lambda names: [n for n in tokenizer_files(names) if "/" not in n],
    }


def stage_bytes(model: ModelConfig, tokenizer: str | None, options: StorageOptions | None = None) -> int:
    """Bytes a node stages for a run (the section's weights and the tokenizer, `s3://` only):
    listings, no download. Raises StorageAccessError naming the field when an input is missing."""
    select = _selectors()
    uris = {f"model.{name}": (name, getattr(model, name)) for name in WEIGHT_FIELDS}
    uris["data.tokenizer"] = ("tokenizer", tokenizer)
    return sum(
        planned_bytes(uri, select=select[key], options=options, what=field)
        for field, (key, uri) in uris.items()
        if uri
    )


def stage_inputs(
    model: ModelConfig, options: StorageOptions | None = None, staged: list[StageReport] | None = None
) -> dict[str, str]:
    """Local paths of the section's weights: `s3://` URIs staged in the node's cache (once per
    node, `sphinxx.storage.stage`), local paths and `file://` as they are. Keyed by field name."""
    select = _selectors()
    local = {}
    for name in WEIGHT_FIELDS:
        uri = getattr(model, name)
        if uri:
            report = stage(uri, select=select[name], options=options, what=f"model.{name}")
            local[name] = report.local_path
            if staged is not None:
                staged.append(report)
    return local


def check_vocab(data: Any, model: SphinxX) -> None:
    """The tokenizer's ids must fit the model's embedding table (a user error, named as such)."""
    size = len(data.encoder.tokenizer)
    if size > model.args.llm.vocab_size:
        raise ValueError(
            f"the tokenizer has {size} ids but the model's vocabulary is {model.args.llm.vocab_size}; "
            "use the flavor's tokenizer or set model.overrides.vocab_size"
        )
