"""State-dict adapters (model/state_dict_adapter.py): round trips, InternLM2 wqkv, lazy reads.

- round trips ours -> foreign -> ours (and foreign -> ours -> foreign) are bit-identical;
- InternLM2: our pack equals a fused wqkv assembled head by head here; logits through the
  InternLM2 names equal transformers' Llama on the same weights; and an attention computed
  directly from a fused wqkv (as InternLM2's remote code slices it) equals ours after unpacking;
- Mixtral: both the Hub per-expert (4.x) and the transformers 5.x layouts round-trip.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
import torch

from sphinxx.model.llm import Attention, Transformer
from sphinxx.model.state_dict_adapter import (
    InternLM2Adapter,
    from_hf_state_dict,
    get_adapter,
    to_hf_state_dict,
)
from sphinxx.schema.decoder import ModelArgs
from tests.model.test_llm import MOE_ARGS, hf_llama, hf_mixtral

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, ffn_dim=96, vocab_size=200, max_seq_len=64)


def assert_bit_identical(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    assert list(a) == list(b) or set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def random_ours(args: ModelArgs, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) for k, v in Transformer(args).state_dict().items()}


class CountingMapping(Mapping[str, torch.Tensor]):
    """A source that records every read and refuses a second read of the same key."""

    def __init__(self, inner: Mapping[str, torch.Tensor]):
        self.inner, self.reads = inner, []

    def __getitem__(self, key: str) -> torch.Tensor:
        assert key not in self.reads, f"{key} read twice"
        self.reads.append(key)
        return self.inner[key]

    def __contains__(self, key: object) -> bool:
        return key in self.inner

    def __iter__(self) -> Iterator[str]:
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


# -- Llama --------------------------------------------------------------------------------------


def test_llama_round_trips_are_bit_identical() -> None:
    adapter = get_adapter("llama", ARGS)
    ours = random_ours(ARGS)
    assert_bit_identical(from_hf_state_dict(adapter, to_hf_state_dict(adapter, ours)), ours)
    hf = hf_llama(ARGS).state_dict()
    assert_bit_identical(to_hf_state_dict(adapter, from_hf_state_dict(adapter, hf)), hf)


def test_from_hf_is_lazy_and_reads_each_key_once() -> None:
    hf = hf_llama(ARGS).state_dict()
    source = CountingMapping(hf)
    stream = get_adapter("llama", ARGS).from_hf(source)
    name, _ = next(stream)
    assert name == "tok_embeddings.weight" and source.reads == ["model.embed_tokens.weight"]
    list(stream)
    assert sorted(source.reads) == sorted(hf)


# -- InternLM2 ----------------------------------------------------------------------------------


def fuse_head_by_head(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """InternLM2's fused layout written out by hand: per KV group, its query heads, its k, its v."""
    hd, n_rep = args.head_dim, args.n_heads // args.n_kv_heads
    rows = []
    for g in range(args.n_kv_heads):
        for r in range(n_rep):
            head = g * n_rep + r
            rows.append(wq[head * hd : (head + 1) * hd])
        rows.append(wk[g * hd : (g + 1) * hd])
        rows.append(wv[g * hd : (g + 1) * hd])
    return torch.cat(rows)


def llama_hf_to_internlm2_names(hf: Mapping[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """A Llama HF state dict re-expressed with InternLM2's remote-code names (test-side only)."""
    out = {
        "model.tok_embeddings.weight": hf["model.embed_tokens.weight"],
        "model.norm.weight": hf["model.norm.weight"],
        "output.weight": hf["lm_head.weight"],
    }
    for i in range(args.n_layers):
        p, q = f"model.layers.{i}.", f"model.layers.{i}."
        out[q + "attention.wqkv.weight"] = fuse_head_by_head(
            hf[p + "self_attn.q_proj.weight"],
            hf[p + "self_attn.k_proj.weight"],
            hf[p + "self_attn.v_proj.weight"],
            args,
        )
        out[q + "attention.wo.weight"] = hf[p + "self_attn.o_proj.weight"]
        out[q + "attention_norm.weight"] = hf[p + "input_layernorm.weight"]
        out[q + "ffn_norm.weight"] = hf[p + "post_attention_layernorm.weight"]
        out[q + "feed_forward.w1.weight"] = hf[p + "mlp.gate_proj.weight"]
        out[q + "feed_forward.w3.weight"] = hf[p + "mlp.up_proj.weight"]
        out[q + "feed_forward.w2.weight"] = hf[p + "mlp.down_proj.weight"]
    return out


def test_internlm2_pack_matches_hand_fused_layout_and_unpacks_back() -> None:
    adapter = InternLM2Adapter(ARGS)
    ours = random_ours(ARGS)
    wq, wk, wv = (ours[f"layers.0.attention.{n}.weight"] for n in ("wq", "wk", "wv"))
    packed = adapter.pack_wqkv(wq, wk, wv)
    assert packed.shape == ((ARGS.n_heads + 2 * ARGS.n_kv_heads) * ARGS.head_dim, ARGS.dim)
    assert torch.equal(packed, fuse_head_by_head(wq, wk, wv, ARGS))
    for got, want in zip(adapter.unpack_wqkv(packed), (wq, wk, wv), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("n_kv_heads", [1, 2, 8])
def test_internlm2_round_trips_are_bit_identical(n_kv_heads: int) -> None:
    args = ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=n_kv_heads, ffn_dim=96, vocab_size=200)
    adapter = get_adapter("internlm2", args)
    ours = random_ours(args)
    theirs = to_hf_state_dict(adapter, ours)
    assert (
        "model.layers.1.attention.wqkv.weight" in theirs
        and "model.layers.1.attention.wq.weight" not in theirs
    )
    assert_bit_identical(from_hf_state_dict(adapter, theirs), ours)
    assert_bit_identical(to_hf_state_dict(adapter, from_hf_state_dict(adapter, theirs)), theirs)


def test_internlm2_logits_equal_transformers_llama() -> None:
    hf_model = hf_llama(ARGS)
    internlm2 = llama_hf_to_internlm2_names(hf_model.state_dict(), ARGS)
    ours = Transformer(ARGS).eval()
    ours.load_state_dict(from_hf_state_dict(get_adapter("internlm2", ARGS), internlm2), strict=True)
    tokens = torch.randint(0, ARGS.vocab_size, (2, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        diff = (ours(tokens) - hf_model(tokens).logits).abs().max().item()
    print(f"internlm2-names parity vs transformers Llama: max abs diff {diff:.3e}")
    assert diff <= 1e-5


def fused_qkv_attention(
    x: torch.Tensor, wqkv: torch.Tensor, wo: torch.Tensor, args: ModelArgs
) -> torch.Tensor:
    """Causal attention straight from a fused wqkv, slicing it as InternLM2's attention does.

    No RoPE (identity rotation) and an explicit softmax, so nothing is shared with our code.
    """
    bsz, seq, _ = x.shape
    n_kv, n_rep, hd = args.n_kv_heads, args.n_heads // args.n_kv_heads, args.head_dim
    qkv = (x @ wqkv.T).view(bsz, seq, n_kv, n_rep + 2, hd)
    q = qkv[..., :n_rep, :].reshape(bsz, seq, n_kv * n_rep, hd)  # head g * n_rep + r
    k, v = qkv[..., -2, :], qkv[..., -1, :]  # [B, S, n_kv, hd]
    out = torch.empty(bsz, seq, args.n_heads, hd)
    causal = torch.ones(seq, seq).tril().bool()
    for head in range(args.n_heads):
        g = head // n_rep
        scores = q[:, :, head] @ k[:, :, g].transpose(1, 2) / hd**0.5  # [B, S, S]
        scores = scores.masked_fill(~causal, float("-inf"))
        out[:, :, head] = scores.softmax(-1) @ v[:, :, g]
    return out.reshape(bsz, seq, -1) @ wo.T


def test_internlm2_unpack_matches_hand_built_fused_attention() -> None:
    torch.manual_seed(5)
    wqkv = torch.randn((ARGS.n_heads + 2 * ARGS.n_kv_heads) * ARGS.head_dim, ARGS.dim) * 0.2
    wo = torch.randn(ARGS.dim, ARGS.dim) * 0.2
    x = torch.randn(2, 9, ARGS.dim)
    attention = Attention(ARGS)
    wq, wk, wv = InternLM2Adapter(ARGS).unpack_wqkv(wqkv)
    attention.load_state_dict({"wq.weight": wq, "wk.weight": wk, "wv.weight": wv, "wo.weight": wo})
    identity_cos, zero_sin = torch.ones(9, ARGS.head_dim), torch.zeros(9, ARGS.head_dim)
    with torch.no_grad():
        got = attention(x, identity_cos, zero_sin)
    want = fused_qkv_attention(x, wqkv, wo, ARGS)
    print(f"internlm2 fused attention: max abs diff {(got - want).abs().max().item():.3e}")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_internlm2_rejects_wrong_wqkv_shape() -> None:
    with pytest.raises(ValueError, match="wqkv has shape"):
        InternLM2Adapter(ARGS).unpack_wqkv(torch.zeros(10, ARGS.dim))


# -- config checks ------------------------------------------------------------------------------


def test_check_hf_config_accepts_matching_and_names_mismatches() -> None:
    adapter = get_adapter("llama", ARGS)
    adapter.check_hf_config(hf_llama(ARGS).config.to_dict())
    legacy = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8, "rope_theta": 10000.0}
    with pytest.raises(ValueError, match="num_key_value_heads"):
        adapter.check_hf_config(legacy)  # absent kv heads mean MHA: 8 != 2
    with pytest.raises(ValueError, match="vocab_size: checkpoint 32000"):
        adapter.check_hf_config({**legacy, "num_key_value_heads": 2, "vocab_size": 32000})
    dynamic = {**legacy, "num_key_value_heads": 2, "rope_scaling": {"type": "dynamic", "factor": 2.0}}
    adapter.check_hf_config(dynamic)  # InternLM2: inactive below max_position_embeddings
    with pytest.raises(ValueError, match="dynamic RoPE scaling"):
        adapter.check_hf_config({**dynamic, "max_position_embeddings": 32})  # ARGS.max_seq_len 64
    with pytest.raises(ValueError, match="rope_scaling"):
        adapter.check_hf_config({**dynamic, "rope_scaling": {"rope_type": "linear", "factor": 2.0}})


def test_unknown_family_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        get_adapter("gpt2", ARGS)


# -- Mixtral (needs model/moe.py and model/moe_convert.py) --------------------------------------


def test_mixtral_round_trips_both_layouts() -> None:
    hf_model = hf_mixtral(MOE_ARGS)
    fused = hf_model.state_dict()  # transformers 5.x in-memory layout
    assert "model.layers.0.mlp.experts.gate_up_proj" in fused
    ours = from_hf_state_dict(get_adapter("mixtral", MOE_ARGS), fused)
    assert set(ours) == set(Transformer(MOE_ARGS).state_dict())
    for layout in ("4.x", "5.x"):
        adapter = get_adapter("mixtral", MOE_ARGS, layout=layout)
        theirs = to_hf_state_dict(adapter, ours)
        assert_bit_identical(from_hf_state_dict(adapter, theirs), ours)
    hub = to_hf_state_dict(get_adapter("mixtral", MOE_ARGS, layout="4.x"), ours)
    assert "model.layers.1.block_sparse_moe.experts.7.w2.weight" in hub
    assert_bit_identical(to_hf_state_dict(get_adapter("mixtral", MOE_ARGS, layout="5.x"), ours), fused)
