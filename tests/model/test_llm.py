"""Decoder (model/llm.py): logits parity with transformers on the same random weights, interface.

The reference is transformers' own `LlamaForCausalLM` / `MixtralForCausalLM` (eager attention,
fp32), loaded with random weights and converted to our names by the state-dict adapter.
"""

from __future__ import annotations

import pytest
import torch

from sphinxx.model.llm import Transformer, apply_activation_checkpointing
from sphinxx.model.state_dict_adapter import from_hf_state_dict, get_adapter
from sphinxx.schema.decoder import ModelArgs

TOL = 1e-5  # max abs logit difference allowed in fp32


def hf_llama(args: ModelArgs, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=args.dim,
        intermediate_size=args.ffn_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        vocab_size=args.vocab_size,
        rms_norm_eps=args.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta},
        max_position_embeddings=args.max_seq_len,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    assert config.rope_parameters["rope_theta"] == args.rope_theta
    model = LlamaForCausalLM(config).eval()
    # HF's default init gives near-zero logits; larger weights make the comparison meaningful.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1 if p.dim() > 1 else 1.0)
    return model


def ours_from(hf_model, args: ModelArgs, family: str = "llama") -> Transformer:
    model = Transformer(args).eval()
    model.load_state_dict(from_hf_state_dict(get_adapter(family, args), hf_model.state_dict()), strict=True)
    return model


CASES = {
    "gqa": ModelArgs(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=300, max_seq_len=64
    ),
    "mha": ModelArgs(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=160, vocab_size=300, max_seq_len=64
    ),
    "mqa-theta1e6": ModelArgs(
        dim=96,
        n_layers=3,
        n_heads=6,
        n_kv_heads=1,
        ffn_dim=128,
        vocab_size=300,
        max_seq_len=64,
        rope_theta=1_000_000.0,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers_llama(case: str) -> None:
    args = CASES[case]
    hf = hf_llama(args)
    ours = ours_from(hf, args)
    tokens = torch.randint(0, args.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(tokens) - hf(tokens).logits).abs().max().item()
    print(f"llama parity {case}: max abs diff {diff:.3e}")
    assert diff <= TOL


def test_right_padding_needs_no_mask() -> None:
    """Right padding: our unmasked causal logits equal HF's masked ones on every real token."""
    args = CASES["gqa"]
    hf = hf_llama(args)
    ours = ours_from(hf, args)
    tokens = torch.randint(0, args.vocab_size, (3, 40), generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([40, 25, 7])
    mask = torch.arange(40)[None, :] < lengths[:, None]
    tokens = tokens.masked_fill(~mask, 0)  # pad id 0 after each sequence
    with torch.no_grad():
        ref = hf(tokens, attention_mask=mask.long()).logits
        got = ours(tokens)
    diff = (got - ref)[mask].abs().max().item()
    print(f"llama parity right-padded: max abs diff {diff:.3e}")
    assert diff <= TOL


def test_interface_embed_forward_hidden_output() -> None:
    args = CASES["gqa"]
    model = Transformer(args).eval()
    tokens = torch.randint(0, args.vocab_size, (2, 10))
    h = model.embed(tokens)
    assert h.shape == (2, 10, args.dim)
    hidden, aux = model.forward_hidden(h)
    assert hidden.shape == (2, 10, args.dim)
    assert aux.dim() == 0 and aux.item() == 0.0
    torch.testing.assert_close(model.output(hidden), model(tokens), rtol=0, atol=0)
    # the LM head on selected positions only equals the full logits at those positions
    picked = torch.tensor([[True] * 3 + [False] * 7, [False] * 9 + [True]])
    torch.testing.assert_close(model.output(hidden[picked]), model(tokens)[picked], rtol=0, atol=0)


def test_max_seq_len_is_enforced() -> None:
    args = ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, vocab_size=50, max_seq_len=8)
    with pytest.raises(ValueError, match="max_seq_len"):
        Transformer(args)(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("moe", [False, True])
def test_activation_checkpointing_keeps_names_and_grads(moe: bool) -> None:
    """Recompute in backward changes nothing: same names, same loss and aux, same grads."""
    args = MOE_ARGS if moe else CASES["gqa"]
    model = Transformer(args)
    tokens = torch.randint(0, args.vocab_size, (2, 16))
    names = list(model.state_dict())

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        hidden, aux = model.forward_hidden(model.embed(tokens))
        loss = model.output(hidden).square().mean() + aux
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss, grads = step()
    apply_activation_checkpointing(model)
    assert all(layer.activation_checkpointing for layer in model.layers)
    assert list(model.state_dict()) == names
    loss_ac, grads_ac = step()
    torch.testing.assert_close(loss_ac, loss, rtol=0, atol=0)
    for n, g in grads.items():
        torch.testing.assert_close(grads_ac[n], g, rtol=1e-6, atol=1e-7)


def test_meta_build_then_materialise() -> None:
    args = CASES["gqa"]
    with torch.device("meta"):
        model = Transformer(args)
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.init_weights()
    assert torch.isfinite(model(torch.zeros(1, 4, dtype=torch.long))).all()
    assert torch.equal(model.norm.weight, torch.ones(args.dim))


def test_invalid_args_raise_value_error() -> None:
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        ModelArgs(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="moe_ffn_dim"):
        ModelArgs(num_experts=8)


# -- Mixtral (needs model/moe.py) -------------------------------------------------------------

MOE_ARGS = ModelArgs(
    dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160, vocab_size=300, max_seq_len=64,
    rope_theta=1_000_000.0, num_experts=8, top_k=2, moe_ffn_dim=32, moe_kernel="loop",
)  # fmt: skip


def hf_mixtral(args: ModelArgs, seed: int = 0):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    config = MixtralConfig(
        hidden_size=args.dim,
        intermediate_size=args.moe_ffn_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        vocab_size=args.vocab_size,
        rms_norm_eps=args.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta},
        max_position_embeddings=args.max_seq_len,
        num_local_experts=args.num_experts,
        num_experts_per_tok=args.top_k,
        router_jitter_noise=0.0,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    model = MixtralForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1 if p.dim() > 1 else 1.0)
    return model


def test_logits_match_transformers_mixtral() -> None:
    hf = hf_mixtral(MOE_ARGS)
    ours = ours_from(hf, MOE_ARGS, family="mixtral")
    tokens = torch.randint(0, MOE_ARGS.vocab_size, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (ours(tokens) - hf(tokens).logits).abs().max().item()
    print(f"mixtral parity: max abs diff {diff:.3e}")
    assert diff <= TOL


@pytest.mark.parametrize("padded", [False, True])
def test_moe_aux_is_coef_times_mean_layer_loss(padded: bool) -> None:
    """forward_hidden's aux = w * mean_l L_l with L_l = (E / (T k)) sum_e count_e meanprob_e
    (docs/moe.md, "Load-balancing loss").

    L_l is computed here from each layer's router weight and its captured input, independently
    of the MoE module's own loss code; with token_mask, right padding is left out of T.
    """
    args = MOE_ARGS
    model = Transformer(args)
    inputs = []
    for layer in model.layers:
        layer.moe.register_forward_pre_hook(lambda _m, a: inputs.append(a[0].detach()))
    mask = torch.arange(12)[None, :] < torch.tensor([[12], [5]]) if padded else None
    _, aux = model.forward_hidden(torch.randn(2, 12, args.dim), token_mask=mask)
    losses = []
    for layer, x in zip(model.layers, inputs, strict=True):
        x = x[mask] if padded else x.reshape(-1, args.dim)  # [T, H] real tokens
        probs = torch.softmax((x @ layer.moe.router.layer.weight.T).float(), dim=-1)  # [T, E]
        chosen = probs.topk(args.top_k, dim=-1).indices
        counts = torch.bincount(chosen.flatten(), minlength=args.num_experts).float()
        scale = args.num_experts / (x.shape[0] * args.top_k)
        losses.append(scale * (counts * probs.mean(0)).sum())
    expected = args.aux_loss_coef * torch.stack(losses).mean()
    torch.testing.assert_close(aux.detach(), expected, rtol=1e-5, atol=1e-7)
