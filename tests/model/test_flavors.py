"""Flavors (model/flavors.py): published parameter counts on the meta device, overrides, errors.

Expected counts are the arithmetic of sphinx_x_model.md section 6.2 (from the HF configs), which
equal the totals of the published checkpoints' index files / model cards (1.1B, 7B, 13B,
46.7B / 12.9B active).
"""

from __future__ import annotations

import pytest

from sphinxx.model.flavors import HF_FAMILY, LLM_FLAVORS, count_params, get_flavor
from sphinxx.model.state_dict_adapter import ADAPTERS

DENSE = {
    "tinyllama-1.1b": 1_100_048_384,
    "internlm2-7b": 7_737_708_544,
    "llama2-13b": 13_015_864_320,
}


@pytest.mark.parametrize("name", sorted(DENSE))
def test_dense_flavor_param_count_exact(name: str) -> None:
    got = count_params(get_flavor(name))
    print(f"{name}: {got:,} params")
    assert got == DENSE[name]
    assert count_params(get_flavor(name), active=True) == got


def test_mixtral_param_counts_exact() -> None:
    args = get_flavor("mixtral-8x7b")
    total, active = count_params(args), count_params(args, active=True)
    print(f"mixtral-8x7b: {total:,} total, {active:,} active")
    assert total == 46_702_792_704
    assert active == 12_879_925_248


def test_independent_formula_matches_for_debug_flavors() -> None:
    """count_params (module walk) vs a closed-form count, for the two debug flavors."""
    for name in ("debug", "debug-moe"):
        a = get_flavor(name)
        attn = a.dim * a.head_dim * (2 * a.n_heads + 2 * a.n_kv_heads)
        ffn = (
            a.num_experts * (3 * a.dim * a.moe_ffn_dim) + a.num_experts * a.dim
            if a.is_moe
            else 3 * a.dim * a.ffn_dim
        )
        expected = 2 * a.vocab_size * a.dim + a.n_layers * (attn + ffn + 2 * a.dim) + a.dim
        assert count_params(a) == expected, name


def test_flavor_names_match_sweep_axis_and_have_adapters() -> None:
    assert {"debug", "debug-moe", "tinyllama-1.1b", "internlm2-7b", "llama2-13b", "mixtral-8x7b"} <= set(
        LLM_FLAVORS
    )
    assert set(HF_FAMILY) == set(LLM_FLAVORS)
    assert set(HF_FAMILY.values()) <= set(ADAPTERS)
    for args in LLM_FLAVORS.values():
        assert args.norm_eps == 1e-5 and not args.tie_embeddings


def test_get_flavor_overrides_return_copies() -> None:
    small = get_flavor("debug", vocab_size=1000)
    assert small.vocab_size == 1000
    assert LLM_FLAVORS["debug"].vocab_size == 4096
    assert get_flavor("debug") is not LLM_FLAVORS["debug"]


def test_get_flavor_errors_are_actionable() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        get_flavor("llama3-8b")
    with pytest.raises(ValueError, match="unknown ModelArgs fields"):
        get_flavor("debug", hidden_size=10)
    with pytest.raises(ValueError, match="n_kv_heads"):
        get_flavor("debug", n_kv_heads=3)
