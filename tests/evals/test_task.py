"""The task record: JSONL round trip, and errors that name the line and the field."""

from __future__ import annotations

import json

import pytest

from sphinxx.evals.task import TaskRecord, dump_line, read_records
from sphinxx.schema.fields import SchemaError


def _record(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "q1",
        "task": "refcoco",
        "split": "val",
        "images": ["s3://b/coco/1.jpg"],
        "question": "left dog",
        "prompt": "Please provide ...",
        "metric": "box_iou_0.5",
        "box": [1.0, 2.0, 30.0, 40.0],
        "image_size": [640, 480],
    }
    return base | fields


def test_a_record_round_trips_through_its_jsonl_line() -> None:
    record = read_records(json.dumps(_record()))[0]
    assert isinstance(record, TaskRecord) and record.box == [1.0, 2.0, 30.0, 40.0] and record.scored
    again = read_records(dump_line(record) + "\n\n" + dump_line(record).replace('"q1"', '"q2"'))
    assert again == [record, TaskRecord(**{**record.__dict__, "id": "q2"})]


@pytest.mark.parametrize(
    ("fields", "path", "reason"),
    [
        ({"metric": "bleu"}, "tasks.jsonl:1.metric", "must be one of"),
        ({"box": [1.0, 2.0, 3.0]}, "tasks.jsonl:1.box", "[x1, y1, x2, y2]"),
        ({"image_size": None}, "tasks.jsonl:1.image_size", "width, height"),
        ({"images": "s3://b/1.jpg"}, "tasks.jsonl:1.images", "must be a list"),
        ({"answer": "x"}, "tasks.jsonl:1.answer", "unknown field"),
        (
            {"metric": "multiple_choice", "choices": ["x", "y"], "answers": ["C"]},
            "tasks.jsonl:1.answers",
            "A, B",
        ),
    ],
)
def test_a_bad_record_names_its_line_and_field(fields: dict[str, object], path: str, reason: str) -> None:
    with pytest.raises(SchemaError) as err:
        read_records(json.dumps(_record(**fields)), "tasks.jsonl")
    assert err.value.path == path and reason in err.value.reason


def test_a_repeated_id_or_a_broken_line_is_named() -> None:
    line = json.dumps(_record())
    with pytest.raises(SchemaError, match=r"tasks.jsonl:2.id: duplicate id 'q1'"):
        read_records(f"{line}\n{line}", "tasks.jsonl")
    with pytest.raises(SchemaError, match=r"tasks.jsonl:2: not JSON"):
        read_records(f"{line}\n{{oops", "tasks.jsonl")
