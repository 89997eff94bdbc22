"""The flavor table (sphinxx.schema.flavors) against the model it describes.

Every count in the table is checked against the decoder `sphinxx.model` builds on the meta device.
The published ones are the arithmetic of the Hugging Face configs, which equal the totals of the
published checkpoints' index files / model cards (1.1B, 7B, 13B, 46.7B / 12.9B active).
"""

from __future__ import annotations

import pytest

from sphinxx.model.flavors import build_sphinx, count_params, get_flavor
from sphinxx.model.info import parameter_counts
from sphinxx.model.state_dict_adapter import ADAPTERS
from sphinxx.model.vision import VISION_PRESETS
from sphinxx.schema.flavors import FLAVORS, SIZE_AXIS, resolve

PUBLISHED = {  # total, active: the model cards' numbers, written out independently of the table
    "tinyllama-1.1b": (1_100_048_384, 1_100_048_384),
    "internlm2-7b": (7_737_708_544, 7_737_708_544),
    "llama2-13b": (13_015_864_320, 13_015_864_320),
    "mixtral-8x7b": (46_702_792_704, 12_879_925_248),
}


@pytest.mark.parametrize("name", list(FLAVORS))
def test_table_counts_are_the_built_decoders(name: str) -> None:
    flavor = FLAVORS[name]
    args = get_flavor(name)
    assert count_params(args) == flavor.params
    assert count_params(args, active=True) == flavor.active_params
    embedding = args.vocab_size * args.dim * (1 if args.tie_embeddings else 2)
    assert flavor.scaling_params == flavor.active_params - embedding > 0


@pytest.mark.parametrize("name", SIZE_AXIS)
def test_published_sizes_match_the_model_cards(name: str) -> None:
    assert (FLAVORS[name].params, FLAVORS[name].active_params) == PUBLISHED[name]


def test_independent_formula_matches_for_the_small_flavors() -> None:
    """count_params (module walk) vs a closed-form count, for the debug and micro flavors."""
    for name in ("debug", "debug-moe", "micro-s", "micro-m", "micro-l"):
        a = get_flavor(name)
        attn = a.dim * a.head_dim * (2 * a.n_heads + 2 * a.n_kv_heads)
        ffn = (
            a.num_experts * (3 * a.dim * a.moe_ffn_dim) + a.num_experts * a.dim
            if a.is_moe
            else 3 * a.dim * a.ffn_dim
        )
        expected = 2 * a.vocab_size * a.dim + a.n_layers * (attn + ffn + 2 * a.dim) + a.dim
        assert count_params(a) == expected, name


def test_every_flavor_has_its_towers_adapter_and_builds() -> None:
    for name, flavor in FLAVORS.items():
        assert flavor.vision in VISION_PRESETS and flavor.hf_family in ADAPTERS, name
        assert flavor.llm.norm_eps == 1e-5 and not flavor.llm.tie_embeddings
        model = build_sphinx(name, device="meta")
        assert parameter_counts(model)["llm"] == flavor.params
        assert model.args.image.grid == flavor.grid


def test_paper_names_resolve() -> None:
    assert resolve("SPHINX-Tiny").name == "tinyllama-1.1b"
    assert resolve("sphinx-moe").name == "mixtral-8x7b"
    assert resolve("sphinx-plus-2k").grid == 3


def test_get_flavor_overrides_return_copies() -> None:
    small = get_flavor("debug", vocab_size=1000)
    assert small.vocab_size == 1000
    assert FLAVORS["debug"].llm.vocab_size == 4096
    assert get_flavor("debug") is not FLAVORS["debug"].llm


def test_get_flavor_errors_are_actionable() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        get_flavor("llama3-8b")
    with pytest.raises(ValueError, match="unknown ModelArgs fields"):
        get_flavor("debug", hidden_size=10)
    with pytest.raises(ValueError, match="n_kv_heads"):
        get_flavor("debug", n_kv_heads=3)


def test_meta_models_are_built_once_per_distinct_args_and_count_like_a_fresh_build() -> None:
    from dataclasses import replace

    from sphinxx.model.flavors import get_sphinx_args, meta_sphinx

    args = get_sphinx_args("debug")
    first = meta_sphinx(args)
    assert meta_sphinx(get_sphinx_args("debug")) is first  # equal args: the same model
    assert next(first.parameters()).device.type == "meta"
    wider = meta_sphinx(replace(args, llm=replace(args.llm, dim=args.llm.dim * 2)))
    assert wider is not first
    assert parameter_counts(first) == parameter_counts(build_sphinx("debug", device="meta"))
    assert parameter_counts(wider)["llm"] > parameter_counts(first)["llm"]
