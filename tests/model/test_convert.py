"""Converter (model/convert.py): HF checkpoint directory -> our sharded safetensors -> same logits.

Checkpoints are written by transformers' own `save_pretrained` (tiny random models), so the
files have the Hub layout (for Mixtral: per-expert tensors, as on the Hub).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import save_file

from sphinxx.model.convert import CONFIG_NAME, INDEX_NAME, convert_hf, load_converted, read_model_args
from sphinxx.model.llm import Transformer
from sphinxx.model.state_dict_adapter import from_hf_state_dict, get_adapter
from sphinxx.schema.decoder import ModelArgs
from tests.model.test_adapters import llama_hf_to_internlm2_names
from tests.model.test_llm import MOE_ARGS, hf_llama, hf_mixtral

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=200, max_seq_len=64)
SHAPE = {
    k: v
    for k, v in asdict(ARGS).items()
    if k in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "max_seq_len")
}
TOKENS = torch.randint(0, ARGS.vocab_size, (2, 24), generator=torch.Generator().manual_seed(6))


def load_ours(path: str, **kwargs) -> Transformer:
    args = read_model_args(path)
    for key, value in kwargs.items():
        setattr(args, key, value)
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device="cpu")
    load_converted(path, model, **{k: v for k, v in kwargs.items() if k == "ep_rank"})
    return model.eval()


def test_convert_sharded_safetensors_gives_identical_logits(tmp_path) -> None:
    hf_model = hf_llama(ARGS)
    src, out = str(tmp_path / "hf"), str(tmp_path / "ours")
    hf_model.save_pretrained(src, max_shard_size="100KB")
    assert os.path.exists(os.path.join(src, "model.safetensors.index.json"))
    calls = []
    meta = convert_hf(
        src, "debug", out, overrides=SHAPE, max_shard_bytes=200_000, progress=lambda *a: calls.append(a)
    )
    assert meta["family"] == "llama" and meta["flavor"] == "debug"
    assert calls[-1][:2] == (len(Transformer(ARGS).state_dict()), len(Transformer(ARGS).state_dict()))
    shards = sorted(n for n in os.listdir(out) if n.endswith(".safetensors"))
    assert len(shards) > 1 and shards[-1] == f"model-{len(shards):05d}-of-{len(shards):05d}.safetensors"
    assert not [n for n in os.listdir(out) if n.endswith(".partial")]
    with open(os.path.join(out, INDEX_NAME)) as f:
        assert set(json.load(f)["weight_map"]) == set(Transformer(ARGS).state_dict())

    ours = load_ours(out)
    direct = Transformer(ARGS).eval()
    direct.load_state_dict(from_hf_state_dict(get_adapter("llama", ARGS), hf_model.state_dict()))
    with torch.no_grad():
        got, via_adapter, ref = ours(TOKENS), direct(TOKENS), hf_model(TOKENS).logits
    assert torch.equal(got, via_adapter)
    diff = (got - ref).abs().max().item()
    print(f"convert llama -> ours vs transformers: max abs diff {diff:.3e}")
    assert diff <= 1e-5


def test_convert_casts_dtype(tmp_path) -> None:
    hf_llama(ARGS).save_pretrained(str(tmp_path / "hf"))
    convert_hf(str(tmp_path / "hf"), "debug", str(tmp_path / "ours"), overrides=SHAPE, dtype=torch.bfloat16)
    from safetensors import safe_open

    (shard,) = [n for n in os.listdir(tmp_path / "ours") if n.endswith(".safetensors")]
    with safe_open(str(tmp_path / "ours" / shard), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def test_convert_internlm2_fused_checkpoint(tmp_path) -> None:
    """An InternLM2-named checkpoint (fused wqkv, .bin file as the Hub repos ship) -> our layout."""
    hf_model = hf_llama(ARGS)
    src = tmp_path / "internlm2"
    src.mkdir()
    torch.save(llama_hf_to_internlm2_names(hf_model.state_dict(), ARGS), src / "pytorch_model.bin")
    config = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    (src / "config.json").write_text(json.dumps({**config, "intermediate_size": 96, "vocab_size": 200}))
    convert_hf(str(src), "internlm2-7b", str(tmp_path / "ours"), overrides={**SHAPE, "rope_theta": 10000.0})
    ours = load_ours(str(tmp_path / "ours"))
    with torch.no_grad():
        diff = (ours(TOKENS) - hf_model(TOKENS).logits).abs().max().item()
    print(f"convert internlm2 -> ours vs transformers Llama: max abs diff {diff:.3e}")
    assert diff <= 1e-5


def test_convert_errors_are_actionable(tmp_path) -> None:
    src = str(tmp_path / "hf")
    hf_model = hf_llama(ARGS)
    hf_model.save_pretrained(src)
    with pytest.raises(ValueError, match="not a local path"):
        convert_hf("s3://bucket/llama", "debug", str(tmp_path / "a"))
    with pytest.raises(ValueError, match="hidden_size: checkpoint 64 vs flavor 256"):
        convert_hf(src, "debug", str(tmp_path / "b"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        convert_hf(src, "debug", str(tmp_path / "c"), overrides=SHAPE)
    # a tensor the adapter does not know (e.g. a bias) must not be dropped silently
    extra = tmp_path / "extra"
    extra.mkdir()
    state = dict(hf_model.state_dict())
    state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file({k: v.contiguous() for k, v in state.items()}, str(extra / "model.safetensors"))
    with pytest.raises(ValueError, match="q_proj.bias"):
        convert_hf(str(extra), "debug", str(tmp_path / "d"), overrides=SHAPE)
    assert not (tmp_path / "d" / CONFIG_NAME).exists()
    with pytest.raises(ValueError, match="not a \\(complete\\) converted checkpoint"):
        read_model_args(str(tmp_path / "d"))


# -- Mixtral (needs model/moe.py and model/moe_convert.py) --------------------------------------


def test_convert_mixtral_hub_layout_and_ep_slices(tmp_path) -> None:
    hf_model = hf_mixtral(MOE_ARGS)
    src, out = str(tmp_path / "hf"), str(tmp_path / "ours")
    hf_model.save_pretrained(src)  # per-expert tensors, as the Hub files
    from safetensors import safe_open

    with safe_open(os.path.join(src, "model.safetensors"), framework="pt") as f:
        assert "model.layers.0.block_sparse_moe.experts.3.w1.weight" in f.keys()
    shape = {k: v for k, v in asdict(MOE_ARGS).items() if k not in ("activation_checkpointing", "ep_size")}
    convert_hf(src, "debug-moe", out, overrides=shape)
    ours = load_ours(out)
    with torch.no_grad():
        diff = (ours(TOKENS) - hf_model(TOKENS).logits).abs().max().item()
    print(f"convert mixtral -> ours vs transformers: max abs diff {diff:.3e}")
    assert diff <= 1e-5
    # expert-parallel rank 1 of 2 loads rows of experts 4..7 of the full tensors
    full = dict(ours.named_parameters())
    rank1 = dict(load_ours(out, ep_size=2, ep_rank=1).named_parameters())
    for name, param in rank1.items():
        if ".moe.experts." in name:
            rows = param.shape[0]
            assert torch.equal(param, full[name][rows:]), name
        else:
            assert torch.equal(param, full[name]), name
