"""Yes/no benchmarks: POPE (a JSONL file per subset) and MME (a txt file per category)."""

from __future__ import annotations

import json
from typing import Any

from .. import prompts
from ..metrics import MME_COGNITION, MME_PERCEPTION
from ..task import TaskRecord
from .common import Files, FormatError, Imported, ImportRequest, basename, ident, join, parent, stem, text

# MME categories whose images lie in an images/ subfolder of the category (the release layout).
MME_IMAGE_SUBFOLDER = frozenset({"artwork", "celebrity", "landmark", "posters", "scene"})


def yes_no(value: str) -> str:
    answer = value.strip()
    if answer.lower() not in ("yes", "no"):
        raise ValueError(f"the answer must be yes or no, got {value!r}")
    return answer


def _lines(files: Files, uri: str) -> list[str]:
    try:
        raw = files.read(uri)
    except FileNotFoundError:
        raise FormatError(f"{uri}: no such file") from None
    try:
        return raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise FormatError(f"{uri}: not UTF-8 text ({err})") from None


def pope_record(qid: str, split: str, image: str, question: str, label: str, subset: str) -> TaskRecord:
    """One POPE question (this importer's and the lmms-eval converter's)."""
    return TaskRecord(
        id=qid,
        task="pope",
        split=split,
        images=[image],
        question=question,
        prompt=prompts.short_answer(question),
        metric="pope",
        answers=[yes_no(label)],
        category=subset,
    )


def mme_record(group: str, n: int, image: str, question: str, answer: str, category: str) -> TaskRecord:
    """The `n`-th question about MME image `group` (`<category>/<image>`; this importer's and the
    lmms-eval converter's): an image's questions are scored together."""
    return TaskRecord(
        id=f"{group}/{n}",
        task="mme",
        split="test",
        images=[image],
        question=question,
        prompt=prompts.short_answer(question),
        metric="mme",
        answers=[yes_no(answer)],
        category=category,
        group=group,
    )


def pope(files: Files, request: ImportRequest) -> Imported:
    """POPE: coco_pope_<subset>.json (SRC), one {question_id, image, text, label} per line."""
    out = Imported()
    subset = stem(request.src).rsplit("_", 1)[-1]
    images = request.images or parent(request.src)

    def build(line: str) -> TaskRecord:
        item: Any = json.loads(line)
        question = text(item, "text")  # fields read in the order the reasons name them
        qid, image = ident(item, "question_id"), join(images, text(item, "image"))
        return pope_record(qid, stem(request.src), image, question, text(item, "label"), subset)

    for n, line in enumerate(_lines(files, request.src), start=1):
        if line.strip():
            out.add(f"{basename(request.src)}:{n}", build, line)
    return out


def mme(files: Files, request: ImportRequest) -> Imported:
    """MME: a folder (SRC) of <category>.txt files, lines "image<TAB>question<TAB>answer"."""
    out = Imported()
    names = [n for n in files.names(request.src) if n.endswith(".txt")]
    if not names:
        raise FormatError(f"{request.src}: no <category>.txt files (MME's eval_tool layout)")
    images = request.images or request.src
    for name in names:
        _mme_category(files, request, name, images, out)
    return out


def _mme_category(files: Files, request: ImportRequest, name: str, images: str, out: Imported) -> None:
    category = stem(name)
    if category not in MME_PERCEPTION + MME_COGNITION:
        out.notes.append(f"{name}: {category!r} is not an MME category; scored in neither sum")
    folder = join(images, category, "images") if category in MME_IMAGE_SUBFOLDER else join(images, category)
    seen: dict[str, int] = {}

    def build(line: str) -> TaskRecord:
        columns = line.split("\t")
        if len(columns) not in (3, 4):  # a fourth column is an earlier model's answer
            raise ValueError(f"expected image<TAB>question<TAB>answer, got {len(columns)} columns")
        image, question, answer = (c.strip() for c in columns[:3])
        if not image or not question:
            raise ValueError("empty image or question column")
        seen[image] = seen.get(image, 0) + 1
        return mme_record(f"{category}/{image}", seen[image], join(folder, image), question, answer, category)

    for n, line in enumerate(_lines(files, join(request.src, name)), start=1):
        if line.strip():
            out.add(f"{name}:{n}", build, line)
