"""The model a run builds: the decoder admission checked, frozen towers, a vocabulary that fits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.jobs._tiny import TINY, tiny_run_config


def test_model_is_the_checked_decoder_with_frozen_towers() -> None:
    from sphinxx.jobs.build import sphinx_args
    from sphinxx.jobs.context import Worker
    from sphinxx.schema.run import run_decoder_args
    from tests.jobs._tiny import run_model

    cfg = tiny_run_config("debug-moe", 2, 2, "file:///tmp/unused")
    assert sphinx_args(cfg.model, run_decoder_args(cfg)).llm == run_decoder_args(cfg)
    model, ep_size = run_model(cfg, Worker())
    assert ep_size == 2 and model.args.llm.dim == TINY["dim"]
    assert not any(p.requires_grad for p in model.vision.parameters())
    assert all(p.requires_grad for p in model.llm.parameters())


def test_a_tokenizer_larger_than_the_vocabulary_is_a_user_error() -> None:
    from sphinxx.jobs.build import check_vocab

    model = SimpleNamespace(args=SimpleNamespace(llm=SimpleNamespace(vocab_size=100)))
    fits = SimpleNamespace(encoder=SimpleNamespace(tokenizer=[0] * 100))
    check_vocab(fits, model)
    too_big = SimpleNamespace(encoder=SimpleNamespace(tokenizer=[0] * 101))
    with pytest.raises(ValueError, match="model.overrides.vocab_size"):
        check_vocab(too_big, model)
