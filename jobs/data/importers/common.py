"""What every training-data converter shares: the streams it reads, the samples it yields, dialogs.

A converter is a pure function `(Streams, ImportRequest) -> Iterator[Sample | Problem]`: it reads
the published files through `Streams` (the command hands it one over the storage layer) one item
at a time and yields, in the files' order, a `Sample` for each record it builds and a `Problem`
for each item it cannot build (skipped, never dropped silently, never fatal). The order is a
function of the files alone, so an interrupted import skips the events it has written and goes on.
A file that cannot be read at all is a `FormatError` naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import ijson

from sphinxx.evals.formats.common import Files, FormatError, Problem, field_of

HUMAN = ("human", "user")
ASSISTANT = ("gpt", "assistant", "chatgpt")  # ShareGPT dumps name ChatGPT's turns "gpt" or "chatgpt"


class Streams(Files, Protocol):
    """`Files` that also open a file as a stream (the converters never hold a whole big file)."""

    def open(self, uri: str) -> BinaryIO: ...  # FileNotFoundError when absent


@dataclass(frozen=True)
class Sample:
    """One record of the source: its dialog and at most one image (a URI, never its bytes)."""

    id: str
    turns: list[tuple[str, str]]
    image: str | None = None  # URI of the image
    image_path: str | None = None  # where a copy goes below the source root (--copy-images)
    image_size: tuple[int, int] | None = None  # [w, h] when the published files say
    trimmed: int = 0  # turns dropped around the dialog (a leading non-human, a last unanswered)


Event = Sample | Problem


def items(streams: Streams, uri: str, prefix: str) -> Iterator[Any]:
    """The JSON values at `prefix` (ijson's: "item" for a top-level list, "data.item" for the list
    under "data") one at a time; numbers as int or float. FormatError names the file and how far
    it was read when it is absent or stops being JSON."""
    try:
        stream = streams.open(uri)
    except FileNotFoundError:
        raise FormatError(f"{uri}: no such file") from None
    count = 0
    with stream:
        try:
            for value in ijson.items(stream, prefix, use_float=True):
                yield value
                count += 1
        except ijson.JSONError as err:
            raise FormatError(f"{uri}: not valid JSON after {count} items at {prefix!r} ({err})") from None


def dialog(messages: Any) -> tuple[list[tuple[str, str]], int]:
    """LLaVA / ShareGPT `conversations` -> (human, assistant) pairs and the number of turns trimmed.

    Turns before the first human one and a last human turn without an answer are trimmed (ShareGPT
    dumps begin with the assistant or a system message where a human turn was cut). Any other
    break in the alternation, an unknown role or an empty turn is an error (the record is skipped).
    """
    if not isinstance(messages, list):
        raise ValueError("field 'conversations' must be a list of {from, value}")
    roles = [_role(field_of(m, "from"), n) for n, m in enumerate(messages)]
    start = next((n for n, role in enumerate(roles) if role == "human"), len(roles))
    end = len(roles) - 1 if roles and roles[-1] == "human" and start < len(roles) else len(roles)
    pairs = []
    for n in range(start, end, 2):
        if roles[n] != "human" or n + 1 >= end or roles[n + 1] != "assistant":
            raise ValueError(f"turn {n}: human and assistant turns do not alternate")
        question, answer = field_of(messages[n], "value"), field_of(messages[n + 1], "value")
        if not isinstance(question, str) or not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"turn {n}: values must be strings, the answer non-empty")
        pairs.append((question, answer))
    if not pairs:
        raise ValueError("no human turn answered by the assistant")
    return pairs, len(roles) - (end - start)


def _role(value: Any, n: int) -> str:
    if value in HUMAN:
        return "human"
    if value in ASSISTANT:
        return "assistant"
    if value == "system":
        return "system"  # trimmed when it leads; elsewhere breaks the alternation
    raise ValueError(f"turn {n}: unknown role {value!r}")
