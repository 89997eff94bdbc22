"""`sphinxx model ...` through the real entry point (`sphinxx.cli.main`)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from sphinxx.cli import COMMAND_GROUPS, main


def test_model_group_is_registered(capsys) -> None:
    assert ("model", "sphinxx.model.cli") in COMMAND_GROUPS
    assert main(["model"]) == 2  # a bare group prints its help
    assert "info" in capsys.readouterr().out


def test_list(capsys) -> None:
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("debug", "tinyllama-1.1b", "internlm2-7b", "llama2-13b", "llama2-13b-2k", "mixtral-8x7b"):
        assert name in out


def test_info_json(capsys) -> None:
    assert main(["model", "info", "sphinx-moe", "--json", "--image", "1000x500"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["flavor"] == "mixtral-8x7b"
    assert info["params"]["llm"] == 46_702_792_704 and info["params"]["llm_active"] == 12_879_925_248
    assert info["image"]["visual_tokens"] == 779


def test_info_text_and_errors(capsys) -> None:
    assert main(["model", "info", "debug", "--image", "300x900"]) == 0
    assert "779 tokens, 3 real views, 2 skipped" in capsys.readouterr().out
    assert main(["model", "info", "no-such-model"]) == 2
    assert "unknown flavor" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["model", "info", "debug", "--image", "wide"])


def test_convert_from_hf(tmp_path, capsys) -> None:
    """Wiring only; the converter itself is tested in test_convert.py."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sphinxx.model.flavors import get_flavor

    args = get_flavor("debug")
    config = LlamaConfig(
        hidden_size=args.dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        intermediate_size=args.ffn_dim,
        vocab_size=args.vocab_size,
        rms_norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    out = tmp_path / "converted"
    code = main(
        ["model", "convert", "--from", "hf", str(tmp_path / "hf"), "--flavor", "debug", "--out", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    assert "sphinxx_llm.json" in os.listdir(out)
    assert main(["model", "convert", str(tmp_path / "hf"), "--flavor", "debug", "--out", "s3://b/k"]) == 2
    assert "not a local path" in capsys.readouterr().err
