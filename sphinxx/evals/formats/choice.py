"""Multiple-choice benchmarks: MMBench (a TSV with base64 images) and ScienceQA-IMG."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import sys
from typing import Any

from .. import prompts
from ..task import TaskRecord, option_letters
from .common import (
    Files,
    FormatError,
    Imported,
    ImportRequest,
    basename,
    field_of,
    ident,
    image_extension,
    join,
    parent,
    read_json,
    text,
)

CIRCULAR_OFFSET = 1_000_000  # MMBench's circular copies of question i have indices i + k * 1e6


def _rows(files: Files, uri: str) -> list[dict[str, str]]:
    try:
        raw = files.read(uri)
    except FileNotFoundError:
        raise FormatError(f"{uri}: no such file") from None
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # a base64 image is one field of megabytes
    try:
        return list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig")), delimiter="\t"))
    except (csv.Error, UnicodeDecodeError) as err:
        raise FormatError(f"{uri}: not a TSV file ({err})") from None
    finally:
        csv.field_size_limit(limit)


def present(value: str | None) -> str:
    return "" if value is None or value.strip().lower() in ("", "nan", "none") else value.strip()


def _image(value: str, images: dict[str, str]) -> bytes:
    """An image cell: base64 bytes, or (in MMBench's circular TSVs) the index of a row that has them."""
    if value.strip().isdigit() and len(value.strip()) < 64:
        value = images.get(value.strip(), "")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("field 'image' is not base64") from None
    image_extension(data)  # ValueError unless PNG, JPEG, GIF or WebP
    return data


def mmbench(files: Files, request: ImportRequest) -> Imported:
    """MMBench: a TSV (SRC) of index, question, hint, A-D, answer, category, image (base64).

    Images are written next to the destination (`request.image_out/<index>.<ext>`). Each question
    is asked once per circular shift of its options, unless the TSV already holds the shifts
    (indices of 1e6 and above); a question's shifts share its `group`.
    """
    out = Imported()
    rows = _rows(files, request.src)
    circular_given = any(
        r.get("index", "").strip().isdigit() and int(r["index"]) >= CIRCULAR_OFFSET for r in rows
    )
    cells = {r.get("index", "").strip(): r.get("image", "") for r in rows if len(r.get("image") or "") >= 64}
    split = basename(request.src).rsplit(".", 1)[0]

    def build(row: dict[str, Any]) -> list[TaskRecord]:
        index = int(ident(row, "index"))
        options = [present(row.get(letter)) for letter in "ABCDEFGH"]
        options = options[: options.index("")] if "" in options else options
        if len(options) < 2:
            raise ValueError("fewer than two options in columns A, B, ...")
        answer = present(row.get("answer"))
        if answer and answer not in option_letters(len(options)):
            raise ValueError(f"field 'answer' {answer!r} is not one of the options' letters")
        data = _image(field_of(row, "image"), cells)
        uri = join(request.image_out, f"{index}.{image_extension(data)}")
        shifts = [0] if circular_given else list(range(len(options)))
        question, hint = text(row, "question"), present(row.get("hint"))
        records = [shifted(row, index, k, options, answer, question, hint, uri, split) for k in shifts]
        out.images[uri] = data  # only for a question that is kept
        return records

    for n, row in enumerate(rows, start=2):  # line 1 is the header
        out.add(f"{basename(request.src)}:{n}", build, row)
    return out


def shifted(
    row: dict[str, Any],
    index: int,
    k: int,
    options: list[str],
    answer: str,
    question: str,
    hint: str,
    image: str,
    split: str,
) -> TaskRecord:
    """Question `index` with its options rotated left by `k` (the answer's letter moves with it)."""
    rotated = options[k:] + options[:k]
    letters = option_letters(len(options))
    answers = [letters[(letters.index(answer) - k) % len(options)]] if answer else []
    return TaskRecord(
        id=str(index) if k == 0 else f"{index}-shift{k}",
        task="mmbench",
        split=split,
        images=[image],
        question=question,
        prompt=prompts.multiple_choice(question, rotated, hint),
        metric="circular_choice",
        answers=answers,
        choices=rotated,
        category=present(row.get("category")),
        group=str(index % CIRCULAR_OFFSET),
        meta={"shift": str(k)}
        | ({"l2_category": row["l2-category"]} if present(row.get("l2-category")) else {}),
    )


def scienceqa(files: Files, request: ImportRequest) -> Imported:
    """ScienceQA-IMG: problems.json (SRC) and pid_splits.json beside it; the problems with an image."""
    out = Imported()
    problems = read_json(files, request.src)
    splits = read_json(files, request.annotations or join(parent(request.src), "pid_splits.json"))
    if not isinstance(problems, dict) or not isinstance(splits, dict):
        raise FormatError(f"{request.src}: problems.json and pid_splits.json are objects keyed by id / split")
    images = request.images or join(parent(request.src), "images")

    def build(pid: str, split: str) -> TaskRecord | None:
        if pid not in problems:
            raise ValueError("listed in pid_splits.json but not in problems.json")
        problem = problems[pid]
        if not field_of(problem, "image"):
            out.filtered += 1  # a text-only problem: not part of ScienceQA-IMG
            return None
        choices = field_of(problem, "choices")
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise ValueError("field 'choices' must be a list of strings")
        answer = field_of(problem, "answer")
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ValueError(f"field 'answer' must index the choices, got {answer!r}")
        hint = present(problem.get("hint"))
        question = text(problem, "question")
        return TaskRecord(
            id=pid,
            task="scienceqa_img",
            split=split,
            images=[join(images, split, pid, text(problem, "image"))],
            question=question,
            prompt=prompts.multiple_choice(question, choices, f"Context: {hint}" if hint else ""),
            answer_prefix=prompts.SCIENCEQA_ANSWER_PREFIX,
            metric="multiple_choice",
            answers=[option_letters(len(choices))[answer]],
            choices=choices,
            category=str(problem.get("subject", "")),
            meta={k: str(problem[k]) for k in ("grade", "topic", "category", "skill") if k in problem},
        )

    for split in ("train", "val", "test"):  # minival / minitrain are subsets of these
        pids = splits.get(split, [])
        for pid in pids if isinstance(pids, list) else []:
            out.add(f"pid_splits.json[{split}][{pid}]", build, str(pid), split)
    return out
