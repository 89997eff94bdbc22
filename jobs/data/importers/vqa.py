"""Short-answer VQA sets as training dialogs: VQAv2 (`vqav2`), TextVQA (`textvqa`), DocVQA (`docvqa`).

Each question becomes one record: the question in the short-answer prompt (`sphinxx.evals.
prompts.short_answer`, "Answer the question using a single word or phrase.", as LLaVA-1.5 and
SPHINX train VQA) answered with one answer: VQAv2's `multiple_choice_answer` (else the most frequent of its
`answers`: OK-VQA's files have VQAv2's layout), TextVQA's most frequent of its ten answers (the
first of equals), DocVQA's first. Layouts and image paths are
the benchmark importers' (docs/evaluation.md, "Importing a benchmark").

VQAv2's questions (SRC) and annotations (`--annotations`, default the name beside SRC) are two
files in the same order; both are streamed and paired by question_id, holding at most
PAIR_WINDOW annotations that arrived before their question.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

from sphinxx.evals import prompts
from sphinxx.evals.formats.common import (
    FormatError,
    ImportRequest,
    attempt,
    basename,
    field_of,
    ident,
    join,
    parent,
    text,
    texts,
)
from sphinxx.evals.formats.vqa import annotations_uri, textvqa_image, vqav2_image

from .common import Event, Sample, Streams, items

PAIR_WINDOW = 10_000  # annotations held while looking for a question's (~3 kB each with ten answers)
_SUBTYPE = re.compile(r"mscoco_(\w+?)_questions")


def _short(rid: str, question: str, answer: str, image: str, path: str, size: Any = None) -> Sample:
    return Sample(
        rid, [(prompts.short_answer(question), answer)], image=image, image_path=path, image_size=size
    )


def _most_common(item: Any) -> str:
    """The most frequent of an item's `answers` (strings or {"answer"}), the first of equals."""
    return Counter(a.strip() for a in texts(item, "answers")).most_common(1)[0][0]


class _Pairing:
    """Annotations streamed beside the questions, looked up by question_id within a window."""

    def __init__(self, stream: Iterator[Any]):
        self.stream, self.held = stream, dict[str, Any]()

    def find(self, qid: str) -> Any:
        if qid in self.held:
            return self.held.pop(qid)
        for annotation in self.stream:
            found = str(annotation.get("question_id")) if isinstance(annotation, dict) else None
            if found == qid:
                return annotation
            if found is not None:
                self.held[found] = annotation
            if len(self.held) > PAIR_WINDOW:
                self.held.pop(next(iter(self.held)))  # the oldest: an annotation without its question
                break
        raise ValueError(f"no annotation for question_id {qid} (the files must list them in the same order)")


def vqav2(streams: Streams, request: ImportRequest) -> Iterator[Event]:
    found = _SUBTYPE.search(basename(request.src))
    subtype = found.group(1) if found else "train2014"
    images, name = request.images or parent(request.src), basename(request.src)
    answers_uri = request.annotations or annotations_uri(request.src)
    if not streams.exists(answers_uri):
        raise FormatError(f"{answers_uri}: no such file (training needs the answers: --annotations URI)")
    pairing = _Pairing(items(streams, answers_uri, "annotations.item"))

    def build(item: Any) -> Sample:
        qid, question = ident(item, "question_id"), text(item, "question")
        image_id = int(field_of(item, "image_id"))
        found = pairing.find(qid)
        answer = (
            text(found, "multiple_choice_answer")
            if "multiple_choice_answer" in found
            else _most_common(found)
        )
        image = vqav2_image(images, subtype, image_id)
        return _short(f"vqav2-{qid}", question, answer, image, image[len(images) + 1 :])

    for n, item in enumerate(items(streams, request.src, "questions.item")):
        yield attempt(f"{name}[{n}]", build, item)


def textvqa(streams: Streams, request: ImportRequest) -> Iterator[Event]:
    images, name = request.images or parent(request.src), basename(request.src)

    def build(item: Any) -> Sample:
        answer = _most_common(item)
        image = textvqa_image(images, text(item, "set_name"), ident(item, "image_id"))
        size = (int(item["image_width"]), int(item["image_height"])) if "image_width" in item else None
        rid = f"textvqa-{ident(item, 'question_id')}"
        return _short(rid, text(item, "question"), answer, image, image[len(images) + 1 :], size)

    for n, item in enumerate(items(streams, request.src, "data.item")):
        yield attempt(f"{name}[{n}]", build, item)


def docvqa(streams: Streams, request: ImportRequest) -> Iterator[Event]:
    images, name = request.images or parent(request.src), basename(request.src)

    def build(item: Any) -> Sample:
        answer, path = texts(item, "answers")[0], text(item, "image")
        rid = f"docvqa-{ident(item, 'questionId')}"
        return _short(rid, text(item, "question"), answer, join(images, path), path.strip("/"))

    for n, item in enumerate(items(streams, request.src, "data.item")):
        yield attempt(f"{name}[{n}]", build, item)
