"""One benchmark question as data: the task record, its JSONL form, and the metric names.

A benchmark is a JSONL file of `TaskRecord`s, one per line, written by `sphinxx eval import`
(docs/evaluation.md, "The task format"). Images are referenced by URI (`s3://`, `file://`), never
embedded. A record carries what a model is asked (`prompt`, optional `answer_prefix`) and what
its answer is scored against (`answers`, `choices`, `box`), with the metric that scores it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sphinxx.schema import fields
from sphinxx.schema.fields import SchemaError, field

# The metric of a record (docs/evaluation.md, "Metrics"); metrics.py implements each.
METRICS = (
    "vqa_accuracy",  # VQAv2, TextVQA: min(#matches/3, 1) over the ten 9-of-10 annotator subsets
    "exact_match",  # GQA
    "anls",  # DocVQA, InfoVQA: average normalised Levenshtein similarity, threshold 0.5
    "relaxed_accuracy",  # ChartQA: numbers within 5%, other answers exact
    "box_iou_0.5",  # RefCOCO, RefCOCO+, RefCOCOg: Acc@0.5 IoU of the box parsed from the answer
    "pope",  # yes/no: accuracy, precision, recall, F1, yes-ratio
    "mme",  # yes/no per image pair: acc + acc+ per category, summed into perception / cognition
    "multiple_choice",  # ScienceQA: the option letter
    "circular_choice",  # MMBench: every circular shift of a question answered right
)


@dataclass(frozen=True)
class TaskRecord:
    """One question of a benchmark, as `sphinxx eval import` writes it."""

    id: str = field(help="unique within its file", min_length=1)
    task: str = field(help="benchmark name: vqav2, gqa, textvqa, docvqa, chartqa, refcoco, ...", min_length=1)
    split: str = field(help="the benchmark's split: val2014, testdev_balanced, val, testA, test, ...")
    images: list[str] = field(help="image URIs (s3:// or file://), in prompt order")
    question: str = field(help="the benchmark's question (or referring expression) as published")
    prompt: str = field(help="what the model is asked: the question in the task's evaluation prompt")
    metric: str = field(help="how an answer is scored", enum=list(METRICS))
    answer_prefix: str = field("", help="text that starts the answer; generation continues from it")
    answers: list[str] = field([], help="reference answers; empty where a split publishes none")
    choices: list[str] = field([], help="multiple choice: the options, lettered A, B, ... in this order")
    box: list[float] | None = field(None, help="grounding: the target box [x1, y1, x2, y2] in pixels")
    image_size: list[int] | None = field(None, help="grounding: [width, height] of the image in pixels")
    category: str = field("", help="the benchmark's category or subset (MME, MMBench, POPE)")
    group: str = field("", help="records scored together: an MME image, an MMBench question's shifts")
    meta: dict[str, str] = field({}, help="further fields of the source (question type, ...)")

    def __post_init__(self) -> None:
        problem = record_problem(self)
        if problem is not None:
            raise SchemaError(*problem)

    @property
    def scored(self) -> bool:
        """Whether the record has a reference to score against (a test split may have none)."""
        return bool(self.answers) or self.box is not None


def record_problem(record: TaskRecord) -> tuple[str, str] | None:
    """The (field, reason) of a record whose fields disagree with its metric, else None."""
    if record.metric == "box_iou_0.5":
        if record.box is not None and len(record.box) != 4:
            return "box", f"must be [x1, y1, x2, y2], got {record.box}"
        if record.box is not None and (record.image_size is None or len(record.image_size) != 2):
            return "image_size", "a box needs the image's [width, height]"
        if record.image_size is not None and min(record.image_size, default=0) <= 0:
            return "image_size", f"must be two positive sizes, got {record.image_size}"
    if record.metric in ("multiple_choice", "circular_choice"):
        if len(record.choices) < 2:
            return "choices", "a multiple-choice record needs at least two options"
        letters = option_letters(len(record.choices))
        bad = [a for a in record.answers if a not in letters]
        if bad:
            return "answers", f"must be option letters among {', '.join(letters)}, got {bad}"
    return None


def option_letters(count: int) -> list[str]:
    """The letters of `count` options: A, B, C, ..."""
    if count > 26:
        raise ValueError(f"{count} options: at most 26 can be lettered")
    return [chr(ord("A") + i) for i in range(count)]


def dump_line(record: TaskRecord) -> str:
    """The record as one JSONL line (no trailing newline)."""
    return json.dumps(fields.dump(record), ensure_ascii=False, sort_keys=False)


def parse_record(data: object, where: str = "") -> TaskRecord:
    """A record from plain JSON data; SchemaError names the field (under `where`)."""
    try:
        return fields.parse(TaskRecord, data)
    except SchemaError as err:
        raise err.under(where) from None


def read_records(text: str, source: str = "") -> list[TaskRecord]:
    """Every record of a JSONL text; a bad line raises SchemaError naming `source:line` and the field."""
    records: list[TaskRecord] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}" if source else f"line {number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise SchemaError(where, f"not JSON ({err.msg})") from None
        record = parse_record(data, where)
        if record.id in seen:
            raise SchemaError(f"{where}.id", f"duplicate id {record.id!r}")
        seen.add(record.id)
        records.append(record)
    return records
