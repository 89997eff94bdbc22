"""Named SPHINX-X models: an LLM flavor + a vision preset + the any-resolution layout.

The names are the sweep's model axis values (`spec.axes.models`, architecture.md), identical to
the LLM flavor names, so a sweep point resolves with one lookup. The SPHINX-X paper's member
names are accepted as aliases (`sphinx-tiny` -> `tinyllama-1.1b`, ...). SPHINX-Plus-2K is
LLaMA2-13B on the 672 px canvas (3 x 3 grid, sphinx_x_model.md section 3.1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sphinxx.model.anyres import AnyResConfig
from sphinxx.model.vision import VISION_PRESETS


@dataclass(frozen=True)
class SphinxFlavor:
    llm: str  # key of sphinxx.model.flavors.LLM_FLAVORS
    vision: str  # key of sphinxx.model.vision.VISION_PRESETS
    grid: int = 2  # canvas = grid * 224
    convnext_view_size: int = 256  # ConvNeXt input per view (section 3.1)
    paper_name: str = ""  # member of the SPHINX-X family, "" for debug flavors


SPHINX_FLAVORS: dict[str, SphinxFlavor] = {
    "debug": SphinxFlavor(llm="debug", vision="debug"),
    "debug-moe": SphinxFlavor(llm="debug-moe", vision="debug"),
    "tinyllama-1.1b": SphinxFlavor("tinyllama-1.1b", "convnext-xxl+dinov2-g", paper_name="SPHINX-Tiny"),
    "internlm2-7b": SphinxFlavor("internlm2-7b", "convnext-xxl+dinov2-g", paper_name="SPHINX-Intern2"),
    "llama2-13b": SphinxFlavor("llama2-13b", "convnext-xxl+dinov2-g", paper_name="SPHINX-Plus"),
    "llama2-13b-2k": SphinxFlavor("llama2-13b", "convnext-xxl+dinov2-g", grid=3, paper_name="SPHINX-Plus-2K"),
    "mixtral-8x7b": SphinxFlavor("mixtral-8x7b", "convnext-xxl+dinov2-g", paper_name="SPHINX-MoE"),
}

PUBLISHED = ("tinyllama-1.1b", "internlm2-7b", "llama2-13b", "llama2-13b-2k", "mixtral-8x7b")

ALIASES: dict[str, str] = {
    f.paper_name.lower(): name for name, f in SPHINX_FLAVORS.items() if f.paper_name
}  # sphinx-tiny, sphinx-intern2, sphinx-plus, sphinx-plus-2k, sphinx-moe


def resolve_flavor(name: str) -> str:
    """Canonical flavor name for a sweep name or a SPHINX-X paper name (case-insensitive alias)."""
    if name in SPHINX_FLAVORS:
        return name
    if name.lower() in ALIASES:
        return ALIASES[name.lower()]
    raise ValueError(
        f"unknown SPHINX-X flavor {name!r}; choose one of {sorted(SPHINX_FLAVORS) + sorted(ALIASES)}"
    )


def get_sphinx_args(name: str, use_skip_token: bool = True, **llm_overrides):
    """SphinxArgs of flavor `name`; llm_overrides go to the decoder (e.g. vocab_size, max_seq_len)."""
    from sphinxx.model.flavors import get_flavor
    from sphinxx.model.sphinx import SphinxArgs

    flavor = SPHINX_FLAVORS[resolve_flavor(name)]
    vision = replace(VISION_PRESETS[flavor.vision], convnext_view_size=flavor.convnext_view_size)
    image = AnyResConfig(
        grid=flavor.grid, convnext_view_size=flavor.convnext_view_size, use_skip_token=use_skip_token
    )
    return SphinxArgs(llm=get_flavor(flavor.llm, **llm_overrides), vision=vision, image=image)


def build_sphinx(name: str, device=None, use_skip_token: bool = True, **llm_overrides):
    """Build flavor `name`; device="meta" for counting or for big models loaded afterwards."""
    import torch

    from sphinxx.model.sphinx import SphinxX

    args = get_sphinx_args(name, use_skip_token=use_skip_token, **llm_overrides)
    if device is None:
        return SphinxX(args)
    with torch.device(device):
        return SphinxX(args)
