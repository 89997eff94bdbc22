"""Building the named flavors: SPHINX-X args and models from the flavor table.

The table itself (names, decoder shapes, vision towers, grid, exact parameter counts) is the
project's vocabulary and lives in `sphinxx.schema.flavors`, where the torch-free operator
reads it too. Here it becomes torch modules: `get_sphinx_args(name)` pairs the decoder with its
vision preset and any-resolution layout, and `count_params` builds a decoder on the meta device
so the published sizes can be checked (and shown by `sphinxx model info`) without memory.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Any

import torch

from sphinxx.model.anyres import AnyResConfig
from sphinxx.model.llm import Transformer
from sphinxx.model.sphinx import SphinxArgs, SphinxX
from sphinxx.model.vision import VISION_PRESETS
from sphinxx.schema.decoder import ModelArgs
from sphinxx.schema.flavors import FLAVORS, decoder_args, resolve

__all__ = ["FLAVORS", "build_sphinx", "count_params", "get_flavor", "get_sphinx_args", "meta_sphinx"]


def get_flavor(name: str, **overrides: Any) -> ModelArgs:
    """A fresh copy of flavor `name`'s decoder with `overrides` applied (e.g. vocab_size=...)."""
    return decoder_args(name, **overrides)


def get_sphinx_args(
    name: str, use_skip_token: bool = True, llm: ModelArgs | None = None, **llm_overrides: Any
) -> SphinxArgs:
    """SphinxArgs of flavor `name`: its decoder (or `llm`, already resolved) with `llm_overrides`,
    its vision towers and its any-resolution layout."""
    flavor = resolve(name)
    vision = replace(VISION_PRESETS[flavor.vision], convnext_view_size=flavor.convnext_view_size)
    image = AnyResConfig(
        grid=flavor.grid, convnext_view_size=flavor.convnext_view_size, use_skip_token=use_skip_token
    )
    decoder = replace(llm, **llm_overrides) if llm is not None else get_flavor(flavor.name, **llm_overrides)
    return SphinxArgs(llm=decoder, vision=vision, image=image)


def build_sphinx(
    name: str, device: torch.device | str | None = None, use_skip_token: bool = True, **llm_overrides: Any
) -> SphinxX:
    """Build flavor `name`; device="meta" for counting or for big models loaded afterwards."""
    args = get_sphinx_args(name, use_skip_token=use_skip_token, **llm_overrides)
    if device is None:
        return SphinxX(args)
    with torch.device(device):
        return SphinxX(args)


_META_MODELS: OrderedDict[str, SphinxX] = OrderedDict()
_META_KEEP = 8


def meta_sphinx(args: SphinxArgs) -> SphinxX:
    """SphinxX `args` on the meta device, for counting (parameters, FLOPs, memory per rank).

    Built once per distinct `args` in a process and shared by every caller (a worker's cost
    estimate, its FLOP model and its memory estimate each count the same model; building even a
    tiny one takes a second of CPU), so callers only read it. The last few are kept.
    """
    key = repr(args)
    model = _META_MODELS.get(key)
    if model is None:
        with torch.device("meta"):
            model = SphinxX(args)
        _META_MODELS[key] = model
        while len(_META_MODELS) > _META_KEEP:
            _META_MODELS.popitem(last=False)
    _META_MODELS.move_to_end(key)
    return model


def count_params(args: ModelArgs, active: bool = False) -> int:
    """Parameter count of the decoder built on the meta device (no memory, no weights).

    active=True counts what one token uses: each MoE layer's experts scaled by top_k / num_experts
    (router, attention, norms, embeddings and head count fully).
    """
    with torch.device("meta"):
        model = Transformer(args)
    total = 0
    # named_parameters de-duplicates tied weights, so tie_embeddings counts them once.
    for name, param in model.named_parameters():
        numel = param.numel()
        if active and args.is_moe and ".moe.experts." in name:
            # ep_size > 1 builds only local experts; scale to the global expert count first.
            numel = numel * args.ep_size * args.top_k // args.num_experts
        elif args.is_moe and ".moe.experts." in name:
            numel *= args.ep_size
        total += numel
    return total
