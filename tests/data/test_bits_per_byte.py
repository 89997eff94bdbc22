"""Bits per byte of the target text: the byte count of a hand-checked example, and equality for
two tokenizers when the model predicts the same distribution over bytes."""

from __future__ import annotations

import math

import pytest

from sphinxx.jobs.data.template import ConversationEncoder, render, target_bytes
from sphinxx.jobs.metrics import bits_per_byte


def _byte_level(merges: bool):
    """A byte-level BPE tokenizer: without merges every byte is a token; with merges tokens span
    several bytes (and multi-byte characters may be split between tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["Assistant: héllo wörld, naïve café", "the answer is 42 ### über"] * 50
    trainer = trainers.BpeTrainer(vocab_size=300 if merges else 261, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)  # fmt: skip
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


TURNS = [("What is it?", "héllo wörld"), ("And then?", "café ✓")]


def test_target_bytes_of_a_hand_checked_example() -> None:
    rendered = render(TURNS)
    # Each answer is spelled " " + answer + "\n###" (the template's separator) by the targets.
    want = sum(len((" " + a + "\n###").encode()) for _, a in TURNS)
    assert want == (1 + 13 + 4) + (1 + 9 + 4)  # é, ö: 2 bytes each; ✓: 3 bytes
    spans = [(0, len(rendered.text))]  # one "token" covering everything: only answer bytes count
    assert target_bytes(rendered, spans) == want
    encoded = ConversationEncoder(_byte_level(merges=True), 512).encode(TURNS)
    assert encoded.target_bytes == want and not encoded.truncated
    assert bits_per_byte(want * math.log(2), want) == pytest.approx(1.0)
    assert math.isnan(bits_per_byte(1.0, 0))


def test_truncation_counts_only_the_bytes_the_kept_targets_spell() -> None:
    turns = [("Q?", "plain ascii answer, then more words")]
    tokenizer = _byte_level(merges=False)
    full = ConversationEncoder(tokenizer, 4096).encode(turns)
    for cut_tokens in (1, 6, 20):
        cut = ConversationEncoder(tokenizer, len(full.tokens) - cut_tokens).encode(turns)
        kept = [t for t in cut.labels if t != -100]
        assert cut.truncated and cut.target_bytes == sum(_token_bytes(tokenizer, t) for t in kept)
        assert cut.target_bytes < full.target_bytes or cut_tokens == 1  # 1: only EOS (no target) goes


def test_equal_bits_per_byte_for_two_tokenizers_when_the_model_predicts_the_same_bytes() -> None:
    """A model that gives every byte probability 1/256 gives a token of k bytes probability
    256^-k: its cross-entropy sum over the targets is ln(256) x the target bytes, whatever the
    tokenizer. Bits per byte must then be 8 for both tokenizers; loss per token differs."""
    results = []
    for merges in (False, True):
        tokenizer = _byte_level(merges)
        encoded = ConversationEncoder(tokenizer, 4096).encode(TURNS)
        targets = [t for t in encoded.labels if t != -100]
        ce = sum(_token_bytes(tokenizer, t) for t in targets) * math.log(256)
        results.append((bits_per_byte(ce, encoded.target_bytes), ce / len(targets), len(targets)))
    (bpb_a, per_token_a, n_a), (bpb_b, per_token_b, n_b) = results
    assert bpb_a == pytest.approx(8.0) and bpb_b == pytest.approx(8.0)
    assert n_b < n_a and per_token_b > per_token_a  # per token, the two disagree


def _token_bytes(tokenizer, token_id: int) -> int:
    """Bytes a byte-level BPE token stands for (its characters map one to one onto bytes)."""
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    token = tokenizer.convert_ids_to_tokens(token_id)
    assert all(c in alphabet for c in token), token
    return len(token)
