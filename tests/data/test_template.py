"""conv_v1_2 template and answer-only labels, checked against independent computations."""

from __future__ import annotations

import pytest

from sphinxx.jobs.data.template import (
    IGNORE_INDEX,
    ConversationEncoder,
    SampleTooLongError,
    render,
    render_prompt,
)

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions."
)
TURNS = [
    ("<image>\nWhat color is the square?", "The square is red."),
    ("How many shapes are in the image?", "There are 3 shapes."),
    ("What is 12 + 30?", "12 + 30 = 42."),
]


def spec_text(turns: list[tuple[str, str]]) -> str:
    """The template of docs/model.md, "Conversation template and loss masking", written out by hand
    (with the <image> marker deleted)."""
    text = SYSTEM + "\n\n###"
    for q, a in turns:
        text += " Human: " + q.replace("<image>\n", "") + "\n###" + " Assistant: " + a + "\n###"
    return text


def test_render_is_the_spec_template() -> None:
    assert render(TURNS).text == spec_text(TURNS)
    assert render(TURNS[1:2]).text == spec_text(TURNS[1:2])


def test_the_generation_prompt_is_the_template_up_to_the_answer(synth_tokenizer) -> None:
    """render_prompt stops where the targets start: " Assistant:", before the answer's space."""
    for history, (q, a) in ((TURNS[:0], TURNS[0]), (TURNS[:2], TURNS[2])):
        full = spec_text([*history, (q, a)])
        prompt = render_prompt(q, history)
        assert full == prompt + " " + a + "\n###" and prompt.endswith("\n### Assistant:")
    # Its tokens are the training tokens before the first target (the tokeniser sees the same prefix).
    encoder = ConversationEncoder(synth_tokenizer, 4096)
    encoded = encoder.encode(TURNS[1:2])
    first_target = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
    assert encoder.encode_prompt(TURNS[1][0]) == encoded.tokens[:first_target]


def test_answer_spans_cover_the_space_answer_and_separator() -> None:
    rendered = render(TURNS)
    assert [rendered.text[s:e] for s, e in rendered.answer_spans] == [" " + a + "\n###" for _, a in TURNS]


def reference_target_tokens(tokenizer, text: str, spans) -> set[int]:
    """Token indices that contain an answer character, via the tokenizer's char_to_token map."""
    enc = tokenizer(text, add_special_tokens=False)
    out = set()
    for start, end in spans:
        for c in range(start, end):
            t = enc.char_to_token(c)
            if t is not None:
                out.add(t)
    return out


@pytest.mark.parametrize(
    "turns", [TURNS, TURNS[1:], TURNS[:1], [("Hi", "Hello!")]], ids=["3-image", "2-text", "1-image", "1-text"]
)
def test_labels_are_exactly_the_answer_tokens(synth_tokenizer, turns) -> None:
    encoder = ConversationEncoder(synth_tokenizer, 4096)
    enc = encoder.encode(turns)
    rendered = render(turns)
    expected = reference_target_tokens(synth_tokenizer, rendered.text, rendered.answer_spans)
    ours = {i - 1 for i, label in enumerate(enc.labels) if label != IGNORE_INDEX}  # -1: BOS
    assert ours == expected
    assert enc.tokens[0] == synth_tokenizer.bos_token_id and enc.labels[0] == IGNORE_INDEX
    assert enc.tokens[-1] == synth_tokenizer.eos_token_id and enc.labels[-1] == IGNORE_INDEX
    assert all(label in (IGNORE_INDEX, tok) for tok, label in zip(enc.tokens, enc.labels, strict=True))
    # What the labels spell is the answers plus their separators, nothing of the prompt.
    labelled = synth_tokenizer.decode([label for label in enc.labels if label != IGNORE_INDEX])
    assert labelled == "".join(" " + a + "\n###" for _, a in turns)
    assert synth_tokenizer.decode(enc.tokens[1:-1]) == rendered.text


def test_piecewise_fallback_agrees_with_offsets_on_a_byte_level_tokenizer(synth_tokenizer) -> None:
    fast = ConversationEncoder(synth_tokenizer, 4096)
    slow = ConversationEncoder(synth_tokenizer, 4096)
    slow.use_offsets = False
    assert fast.encode(TURNS).labels == slow.encode(TURNS).labels


def test_metaspace_tokenizer_like_llama(tmp_path) -> None:
    """A SentencePiece-style (metaspace) tokenizer: the space is glued to the next word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    tok.train_from_iterator([spec_text(TURNS)] * 5, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    enc = ConversationEncoder(hf, 4096).encode(TURNS)
    rendered = render(TURNS)
    expected = reference_target_tokens(hf, rendered.text, rendered.answer_spans)
    assert {i - 1 for i, label in enumerate(enc.labels) if label != IGNORE_INDEX} == expected
    assert enc.num_targets > 0


def test_truncation_keeps_the_budget_next_to_the_image(synth_tokenizer) -> None:
    full = ConversationEncoder(synth_tokenizer, 4096).encode(TURNS)
    image_tokens = 779
    seq_len = image_tokens + len(full.tokens) - 5
    cut = ConversationEncoder(synth_tokenizer, seq_len).encode(TURNS, num_image_tokens=image_tokens)
    assert cut.truncated and len(cut.tokens) + image_tokens == seq_len
    assert cut.tokens == full.tokens[: len(cut.tokens)] and cut.labels == full.labels[: len(cut.labels)]
    with pytest.raises(SampleTooLongError, match="data.seq_len"):
        ConversationEncoder(synth_tokenizer, 1000).encode(TURNS, num_image_tokens=1295)


def test_tokenizer_without_bos_is_rejected(synth_tokenizer) -> None:
    class NoBos:
        bos_token_id = None
        eos_token_id = 2

    with pytest.raises(ValueError, match="BOS"):
        ConversationEncoder(NoBos(), 128)
