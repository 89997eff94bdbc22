"""The conversation template (conv_v1_2), tokenisation and answer-only labels
(docs/model.md, "Conversation template and loss masking").

    text = SYSTEM + "\\n\\n###" + for each turn: " Human: " + q + "\\n###" + " Assistant: " + a + "\\n###"
    tokens = [BOS] + tokenize(text) + [EOS]

Labels: a token is a target iff its characters overlap what the model generates after the
prompt " Assistant:" -- the space, the answer and the "\\n###" after it. BOS, the system prompt,
human turns, the " Assistant:" prefixes and the final EOS are not (the model learns to stop by
emitting "###"). Counting the space matters for tokenizers that give it its own token.

The whole text is tokenised once and the spans come from character offsets, so training sees
exactly the tokenisation inference will see. A tokenizer without offsets (a slow or remote-code
one) falls back to tokenising the pieces one by one, which can differ from inference at piece
boundaries.

Labels follow the HF convention the model expects (`sphinxx.model.sphinx`): labels[i] =
tokens[i] where token i is a target, else -100; the model shifts. Image tokens are not in
`tokens`: the model inserts the image block after BOS, so the text budget of a sample is
`seq_len - image positions`. Longer samples are right-truncated (an image is never cut).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sphinxx.jobs.data.tokenizer import (
    NoTokenizerFilesError,
    TokenizerFilesError,
    load_local,
    tokenizer_files,
)
from sphinxx.model.sphinx import IGNORE_INDEX  # the model's loss mask: labels it never trains on
from sphinxx.storage.stage import stage

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
SEP = "\n###"
HUMAN = " Human: "
ASSISTANT = (
    " Assistant:"  # the generation prompt ends here (docs/model.md, "Conversation template and loss masking")
)
IMAGE_MARKER = "<image>"


@dataclass(frozen=True)
class Rendered:
    """The serialised conversation and its target character spans [start, end)."""

    text: str
    pieces: tuple[tuple[str, bool], ...]  # (piece, is_target) in order; "".join(pieces) == text
    answer_spans: tuple[tuple[int, int], ...]


def clean_question(question: str) -> str:
    """Drop `<image>` markers: the image always comes first, outside the text
    (docs/model.md, "Sequence layout")."""
    if IMAGE_MARKER not in question:
        return question
    return question.replace(IMAGE_MARKER, "").strip()


def render(turns: Sequence[tuple[str, str]]) -> Rendered:
    pieces: list[tuple[str, bool]] = [(SYSTEM + "\n" + SEP, False)]
    for question, answer in turns:
        pieces.append((HUMAN + clean_question(question) + SEP + ASSISTANT, False))
        # The space after "Assistant:" is generated, not prompted: it belongs to the target.
        pieces.append((" " + answer + SEP, True))
    spans, pos = [], 0
    for piece, target in pieces:
        if target:
            spans.append((pos, pos + len(piece)))
        pos += len(piece)
    return Rendered("".join(p for p, _ in pieces), tuple(pieces), tuple(spans))


def render_prompt(question: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """The text generation starts from: the turns so far as `render` writes them, then the new
    question, ending at " Assistant:" (the model generates the space, the answer and "\\n###")."""
    return render(history).text + HUMAN + clean_question(question) + SEP + ASSISTANT


@dataclass
class Encoded:
    tokens: list[int]  # [BOS] + text tokens + [EOS] (EOS dropped when truncated)
    labels: list[int]  # same length; IGNORE_INDEX except answer tokens
    truncated: bool
    # UTF-8 bytes of the answer text the targets spell (after truncation): the denominator of
    # bits per byte, which does not depend on the tokenizer (docs/training.md, "Held-out evaluation")
    target_bytes: int = 0

    @property
    def num_targets(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


class SampleTooLongError(ValueError):
    """The image block alone leaves no room for text within `data.seq_len`."""


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """BOS, EOS and pad ids. Pad is EOS when the tokenizer has none (TinyLlama, Llama 2 and
    Mixtral ship none; InternLM2's pad is `</s>`, EOS anyway): padded positions are masked, so
    any id in the vocabulary serves. A BOS or EOS that is missing, outside the vocabulary, or
    that resolved to the unknown token (a name the vocabulary lacks) is refused."""
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    unk = getattr(tokenizer, "unk_token_id", None)

    def check(role: str) -> int | None:
        value = getattr(tokenizer, f"{role}_token_id", None)
        token = getattr(tokenizer, f"{role}_token", None)
        if value is None:
            return None
        value = int(value)
        if size is not None and not 0 <= value < size:
            raise ValueError(
                f"the tokenizer {name} has {role.upper()} id {value} outside its vocabulary of {size}"
            )
        if unk is not None and value == unk and token != getattr(tokenizer, "unk_token", None):
            raise ValueError(f"the tokenizer {name} has no {role.upper()} token {token!r} in its vocabulary")
        return value

    bos, eos, pad = check("bos"), check("eos"), check("pad")
    for role, value in (("BOS", bos), ("EOS", eos)):
        if value is None:
            raise ValueError(f"the tokenizer {name} has no {role} token; the template needs BOS and EOS")
    assert bos is not None and eos is not None
    return bos, eos, eos if pad is None else pad


class ConversationEncoder:
    """Template + tokenizer + label mask + truncation, for one tokenizer and `seq_len`."""

    def __init__(self, tokenizer: Any, seq_len: int):
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.bos_id, self.eos_id, self.pad_id = special_ids(tokenizer)
        self.use_offsets = bool(getattr(tokenizer, "is_fast", False))

    def text_ids_and_mask(self, rendered: Rendered) -> tuple[list[int], list[bool]]:
        """Token ids of the text (no BOS/EOS) and which of them are targets."""
        ids, mask, _ = self._encode_text(rendered)
        return ids, mask

    def _encode_text(self, rendered: Rendered) -> tuple[list[int], list[bool], list[tuple[int, int]]]:
        """Token ids, target mask, and each token's character span in the rendered text."""
        if not self.use_offsets:
            ids: list[int] = []
            mask: list[bool] = []
            spans: list[tuple[int, int]] = []
            pos = 0
            for piece, target in rendered.pieces:
                piece_ids = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids.extend(piece_ids)
                mask.extend([target] * len(piece_ids))
                # No offsets: the piece's characters are spread evenly over its tokens.
                cuts = [
                    pos + round(len(piece) * k / max(len(piece_ids), 1)) for k in range(len(piece_ids) + 1)
                ]
                spans.extend(zip(cuts[:-1], cuts[1:], strict=True))
                pos += len(piece)
            return ids, mask, spans
        enc = self.tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
        mask = [_overlaps(start, end, rendered.answer_spans) for start, end in offsets]
        return ids, mask, offsets

    def encode_prompt(self, question: str, history: Sequence[tuple[str, str]] = ()) -> list[int]:
        """[BOS] + the tokens of `render_prompt`: what generation feeds the model after the image."""
        text = render_prompt(question, history)
        return [self.bos_id, *self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def encode(self, turns: Sequence[tuple[str, str]], num_image_tokens: int = 0) -> Encoded:
        budget = self.seq_len - num_image_tokens
        if budget < 2:
            raise SampleTooLongError(
                f"the image takes {num_image_tokens} positions, leaving {budget} of "
                f"data.seq_len={self.seq_len} for text; raise data.seq_len or lower data.canvas"
            )
        rendered = render(turns)
        ids, mask, spans = self._encode_text(rendered)
        tokens = [self.bos_id, *ids, self.eos_id]
        labels = [
            IGNORE_INDEX,
            *(i if m else IGNORE_INDEX for i, m in zip(ids, mask, strict=True)),
            IGNORE_INDEX,
        ]
        truncated = len(tokens) > budget
        kept = [spans[j] for j in range(min(len(ids), budget - 1)) if mask[j]]  # text token j sits at j + 1
        return Encoded(tokens[:budget], labels[:budget], truncated, target_bytes(rendered, kept))


def target_bytes(rendered: Rendered, token_spans: Sequence[tuple[int, int]]) -> int:
    """UTF-8 bytes of the answer characters that the target tokens (their character spans) cover.

    A character counts once even when two byte-level tokens share it (a multi-byte character
    split between them), and only inside an answer span: the count is a property of the text,
    not of the tokenizer, so bits per byte compares models with different vocabularies."""
    covered: set[int] = set()
    for start, end in token_spans:
        for s_start, s_end in rendered.answer_spans:
            covered.update(range(max(start, s_start), min(end, s_end)))
    return sum(len(rendered.text[i].encode()) for i in covered)


def _overlaps(start: int, end: int, spans: Sequence[tuple[int, int]]) -> bool:
    # Offsets of a token that carries at least one answer character overlap its span. Zero-width
    # tokens (start == end) carry no characters and are never targets.
    return end > start and any(start < s_end and end > s_start for s_start, s_end in spans)


# ---------------------------------------------------------------------------- loading


def load_tokenizer(uri: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a folder of Hugging Face tokenizer files: a local path or a URI (its
    tokenizer files copied to a local cache first). Which layouts load, and how:
    `sphinxx.jobs.data.tokenizer` (docs/training.md, "Tokenizers")."""
    local = _local_copy(uri)
    try:
        tokenizer = load_local(local, uri, trust_remote_code=trust_remote_code)
    except TokenizerFilesError:
        raise  # names the URI already
    except (OSError, ValueError) as err:
        detail = " ".join(str(err).split())  # one line: transformers' messages span several
        raise ValueError(f"cannot load a tokenizer from {uri}: {detail}") from None
    tokenizer.name_or_path = uri  # not the cache folder: errors and logs name what the config says
    return tokenizer


def _local_copy(uri: str) -> str:
    """The tokenizer files at `uri` as a local folder: staged once per node (`sphinxx.storage.stage`),
    only the files a tokenizer reads, never the weights that may share the folder."""

    def select(names: Sequence[str]) -> list[str]:
        files = [n for n in tokenizer_files(names) if "/" not in n]  # tokenizer files are flat
        if not files:
            raise NoTokenizerFilesError(f"no tokenizer files under {uri}")
        return files

    return stage(uri, select=select, what="data.tokenizer").local_path
