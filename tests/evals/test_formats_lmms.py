"""`sphinxx eval import lmms-<task>`: small Parquet files in the layouts of lmms-eval's Hugging Face
datasets (images as `{bytes, path}` structs), converted into task files. A converted record is the
native importer's record for the same item, apart from where its image lies; bad rows are skipped
and reported."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sphinxx.cli import main
from sphinxx.evals.formats.lmms import split_of
from sphinxx.evals.task import TaskRecord, read_records
from sphinxx.jobs.eval_import import import_benchmark
from sphinxx.storage.objectfs import open_fs

SHORT = "\nAnswer the question using a single word or phrase."
MC = "Answer with the option's letter from the given choices directly."


def _png(size: tuple[int, int] = (4, 3), color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _feature(data: bytes | None, name: str = "x.png") -> dict[str, Any]:
    """An `Image` feature as `datasets` stores it in Parquet."""
    return {"bytes": data, "path": name}


def _parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _imported(fmt: str, src: Path, dest: Path, **options: Any) -> tuple[list[TaskRecord], dict[str, Any]]:
    summary = import_benchmark(fmt, str(src), str(dest), **options)
    fs = open_fs(summary.dest)
    records = read_records(fs.read_bytes(summary.dest).decode(), summary.dest)
    report = json.loads(fs.read_bytes(summary.report_uri))
    assert report["records"] == len(records) and report["skipped"] == len(report["problems"])
    return records, report


def _reasons(report: dict[str, Any]) -> list[str]:
    return [f"{p['where']}: {p['reason']}" for p in report["problems"]]


def _same_but_images(converted: TaskRecord, native: TaskRecord) -> None:
    assert dataclasses.replace(converted, images=[]) == dataclasses.replace(native, images=[])


def _image_of(record: TaskRecord) -> bytes:
    (uri,) = record.images
    assert uri.startswith("file://")
    return Path(uri.removeprefix("file://")).read_bytes()


def test_split_names_of_hub_files() -> None:
    assert split_of("file:///d/data/validation-00000-of-00042.parquet") == "validation"
    assert split_of("file:///d/testdev_balanced_instructions/testdev-00000-of-00001.parquet") == "testdev"
    assert split_of("file:///d/en/dev/0000.parquet") == "dev"  # the hub's refs/convert/parquet layout
    assert split_of("file:///d/pope.parquet") == "pope"


def test_pope_rows_match_the_native_import(tmp_path: Path) -> None:
    image = _png()
    rows = [
        {"question_id": "1", "question": "Is there a snowboard in the image?", "answer": "yes",
         "category": "adversarial", "image": _feature(image, "COCO_val2014_000000310196.jpg")},
        {"question_id": "2", "question": "Is there a cat?", "answer": "maybe", "category": "adversarial",
         "image": _feature(image)},
        {"question_id": "3", "question": "Is there a dog?", "answer": "no", "category": "random",
         "image": _feature(None)},
        {"question_id": "4", "question": "Is there a person?", "answer": "No", "category": "random",
         "image": _feature(image)},
    ]  # fmt: skip
    src = _parquet(tmp_path / "pope" / "test-00000-of-00001.parquet", rows)
    records, report = _imported("lmms-pope", src.parent, tmp_path / "tasks" / "pope.jsonl")
    assert [r.id for r in records] == ["1", "4"]
    first = records[0]
    assert first.prompt == "Is there a snowboard in the image?" + SHORT and first.metric == "pope"
    assert first.split == "coco_pope_adversarial" and first.category == "adversarial"
    assert records[1].answers == ["No"] and records[1].split == "coco_pope_random"
    assert first.images[0].startswith(f"file://{tmp_path}/tasks/pope.images/") and first.images[0].endswith(
        ".png"
    )
    assert first.images == records[1].images and _image_of(first) == image  # one file per picture
    assert report["images_written"] == 1
    assert _reasons(report) == [
        "test-00000-of-00001.parquet[1]: the answer must be yes or no, got 'maybe'",
        "test-00000-of-00001.parquet[2]: field 'image' holds no image bytes"
        " (an Image feature's {bytes, path})",
    ]
    native_src = _write(
        tmp_path / "native" / "coco_pope_adversarial.json",
        json.dumps({"question_id": 1, "image": "COCO_val2014_000000310196.jpg",
                    "text": "Is there a snowboard in the image?", "label": "yes"}),
    )  # fmt: skip
    (native,), _ = _imported("pope", native_src, tmp_path / "native.jsonl")
    _same_but_images(first, native)

    records, report = _imported("lmms-pope", src, tmp_path / "random.jsonl", split="coco_pope_random")
    assert [r.id for r in records] == ["4"] and report["filtered"] == 1


def test_vqav2_rows_match_the_native_import(tmp_path: Path) -> None:
    answers = [{"answer": "red", "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]
    image = _png()
    rows = [
        {"question_id": 420, "question": "What color is the bus?", "answers": answers, "image_id": 42,
         "question_type": "what color", "answer_type": "other", "image": _feature(image)},
        {"question_id": 440, "question": "", "answers": answers, "image_id": 44,
         "question_type": "what", "answer_type": "other", "image": _feature(image)},
    ]  # fmt: skip
    src = _parquet(tmp_path / "vqav2" / "validation-00000-of-00001.parquet", rows)
    records, report = _imported("lmms-vqav2", src, tmp_path / "vqav2.jsonl")
    (record,) = records
    assert record.split == "val2014" and record.answers == ["red"] * 10 and record.metric == "vqa_accuracy"
    assert (
        record.meta == {"question_type": "what color", "answer_type": "other"} and _image_of(record) == image
    )
    assert report["reasons"] == {"field 'question' must be a non-empty string, got ''": 1}

    questions = {
        "data_subtype": "val2014",
        "questions": [{"image_id": 42, "question": "What color is the bus?", "question_id": 420}],
    }
    annotations = {
        "annotations": [
            {"question_id": 420, "image_id": 42, "answers": answers, "answer_type": "other",
             "question_type": "what color"},
        ]
    }  # fmt: skip
    native_src = _write(tmp_path / "native" / "v2_OpenEnded_mscoco_val2014_questions.json", questions)
    _write(tmp_path / "native" / "v2_mscoco_val2014_annotations.json", annotations)
    (native,), _ = _imported("vqav2", native_src, tmp_path / "native.jsonl")
    _same_but_images(record, native)

    test_rows = [{"question_id": 7, "question": "Why?", "answers": None, "image": _feature(image)}]
    src = _parquet(tmp_path / "vqav2" / "testdev-00000-of-00001.parquet", test_rows)
    (record,), report = _imported("lmms-vqav2", src, tmp_path / "testdev.jsonl", images="s3://coco")
    assert record.split == "test-dev2015" and not record.scored and report["unscored"] == 1
    assert report["notes"] == ["--images s3://coco is not used: lmms-vqav2 reads the images in the rows"]


def test_textvqa_and_docvqa_rows(tmp_path: Path) -> None:
    image = _png()
    rows = [
        {"question_id": 1, "question": "what brand?", "answers": ["nokia"] * 10, "set_name": "val",
         "image_id": "0054c91397f2fe05", "image": _feature(image)},
        {"question_id": 2, "question": "what year?", "answers": [], "set_name": "val", "image_id": "x",
         "image": _feature(image)},
    ]  # fmt: skip
    src = _parquet(tmp_path / "textvqa" / "validation-00000-of-00001.parquet", rows)
    records, report = _imported("lmms-textvqa", src, tmp_path / "t.jsonl")
    assert [r.id for r in records] == ["1"] and records[0].split == "val" and records[0].task == "textvqa"
    assert records[0].answers == ["nokia"] * 10 and records[0].prompt == "what brand?" + SHORT
    assert report["reasons"] == {"field 'answers' must be a non-empty list of strings, got []": 1}

    rows = [
        {"questionId": 49153, "question": "What is the date?", "answers": ["1/2/99", "Jan 2 1999"],
         "image": _feature(image)},
        {"questionId": 49154, "question": "Who signed?", "answers": ["J. Smith"], "image": _feature(b"GIF")},
    ]  # fmt: skip
    src = _parquet(tmp_path / "docvqa" / "DocVQA" / "validation-00000-of-00001.parquet", rows)
    records, report = _imported("lmms-docvqa", src.parent, tmp_path / "d.jsonl")
    assert [r.id for r in records] == ["49153"] and records[0].split == "val" and records[0].metric == "anls"
    assert records[0].answers == ["1/2/99", "Jan 2 1999"]
    assert report["reasons"] == {"field 'image' is not a PNG, JPEG, GIF or WebP image": 1}


def test_chartqa_rows_are_numbered_within_their_split(tmp_path: Path) -> None:
    image = _png()
    rows = [
        {"type": "human_test", "question": "What is the highest value?", "answer": "42",
         "image": _feature(image)},
        {"type": "human_test", "question": "", "answer": "1", "image": _feature(image)},
        {"type": "augmented_test", "question": "What share?", "answer": "3.5", "image": _feature(image)},
        {"type": "human_test", "question": "Which year?", "answer": "2019", "image": _feature(image)},
    ]  # fmt: skip
    src = _parquet(tmp_path / "chartqa" / "test-00000-of-00001.parquet", rows)
    records, report = _imported("lmms-chartqa", src, tmp_path / "c.jsonl")
    assert [r.id for r in records] == ["test_human-0", "test_augmented-0", "test_human-2"]
    assert [r.split for r in records] == ["test_human", "test_augmented", "test_human"]
    assert records[1].answers == ["3.5"] and records[0].metric == "relaxed_accuracy"
    assert _reasons(report) == [
        "test-00000-of-00001.parquet[1]: field 'question' must be a non-empty string, got ''"
    ]
    items = [{"imgname": "a.png", "query": "What is the highest value?", "label": "42"}]
    (native,), _ = _imported(
        "chartqa", _write(tmp_path / "n" / "test_human.json", items), tmp_path / "n.jsonl"
    )
    _same_but_images(records[0], native)


def test_gqa_questions_and_their_images_parquet(tmp_path: Path) -> None:
    cup, table = _png(color=(1, 2, 3)), _png(color=(4, 5, 6))
    types = {"structural": "verify", "semantic": "attr", "detailed": "verifyColor"}
    questions = [
        {"id": "201", "imageId": "n161313", "question": "Is the cup red?", "answer": "yes", "types": types},
        {"id": "202", "imageId": "n1", "question": "Is the table wooden?", "answer": "no", "types": types},
        {"id": "203", "imageId": "n999", "question": "Where?", "answer": "left", "types": types},
    ]
    _parquet(tmp_path / "gqa" / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet", questions)
    images = [{"id": "n161313", "image": _feature(cup)}, {"id": "n1", "image": _feature(table)}]
    _parquet(tmp_path / "gqa" / "testdev_balanced_images" / "testdev-00000-of-00001.parquet", images)
    src = tmp_path / "gqa" / "testdev_balanced_instructions"
    records, report = _imported("lmms-gqa", src, tmp_path / "gqa.jsonl")
    assert [r.id for r in records] == ["201", "202"] and records[0].split == "testdev_balanced"
    assert _image_of(records[0]) == cup and _image_of(records[1]) == table
    assert report["reasons"] == {
        f"imageId 'n999' is not in the images Parquet (file://{tmp_path}/gqa/testdev_balanced_images)": 1
    }
    native_src = _write(
        tmp_path / "native" / "testdev_balanced_questions.json",
        {"201": {"imageId": "n161313", "question": "Is the cup red?", "answer": "yes", "types": types}},
    )
    (native,), _ = _imported("gqa", native_src, tmp_path / "native.jsonl")
    _same_but_images(records[0], native)

    elsewhere = _parquet(tmp_path / "loose" / "questions.parquet", questions[:1])
    with pytest.raises(
        ValueError, match="GQA's images are a separate Parquet dataset; name it with --images"
    ):
        import_benchmark("lmms-gqa", str(elsewhere), str(tmp_path / "x.jsonl"))
    images_src = tmp_path / "gqa" / "testdev_balanced_images"
    (record,), _ = _imported("lmms-gqa", elsewhere, tmp_path / "y.jsonl", images=str(images_src))
    assert record.split == "questions" and _image_of(record) == cup


def test_mme_rows_are_grouped_by_image(tmp_path: Path) -> None:
    q = "Is there a train in this image? Please answer yes or no."
    train, code = _png(color=(9, 9, 9)), _png(color=(7, 7, 7))
    rows = [
        {"question_id": "existence/000000006040.jpg", "question": q, "answer": "Yes", "category": "existence",
         "image": _feature(train)},
        {"question_id": "existence/000000006040.jpg", "question": q, "answer": "No", "category": "existence",
         "image": _feature(train)},
        {"question_id": "0020.png", "question": "Is the output 3?", "answer": "Maybe",
         "category": "code_reasoning", "image": _feature(code)},
    ]  # fmt: skip
    src = _parquet(tmp_path / "mme" / "test-00000-of-00004.parquet", rows)
    records, report = _imported("lmms-mme", src.parent, tmp_path / "mme.jsonl")
    assert [r.id for r in records] == ["existence/000000006040.jpg/1", "existence/000000006040.jpg/2"]
    assert {r.group for r in records} == {"existence/000000006040.jpg"} and records[1].answers == ["No"]
    assert report["reasons"] == {"the answer must be yes or no, got 'Maybe'": 1}
    native_src = _write(tmp_path / "native" / "existence.txt", f"000000006040.jpg\t{q}\tYes\n")
    (native,), _ = _imported("mme", native_src.parent, tmp_path / "native.jsonl")
    _same_but_images(records[0], native)


def test_scienceqa_img_keeps_the_rows_with_an_image(tmp_path: Path) -> None:
    image = _png()
    rows = [
        {"question": "Which is a mammal?", "choices": ["shark", "whale", "trout"], "answer": 1,
         "hint": "Look at the picture.", "subject": "natural science", "grade": "grade4",
         "image": _feature(image)},
        {"question": "Text only?", "choices": ["a", "b"], "answer": 0, "hint": "",
         "subject": "language science", "grade": "grade2", "image": None},
        {"question": "Bad answer?", "choices": ["a", "b"], "answer": 5, "hint": "", "subject": "x",
         "grade": "grade1", "image": _feature(image)},
    ]  # fmt: skip
    src = _parquet(tmp_path / "ScienceQA-IMG" / "test-00000-of-00001.parquet", rows)
    (record,), report = _imported("lmms-scienceqa", src, tmp_path / "sqa.jsonl")
    assert record.id == "0" and record.split == "test" and record.task == "scienceqa_img"
    assert record.answers == ["B"] and record.answer_prefix == "The answer is"
    assert (
        record.prompt
        == f"Context: Look at the picture.\nWhich is a mammal?\nA. shark\nB. whale\nC. trout\n{MC}"
    )
    assert record.category == "natural science" and record.meta == {"grade": "grade4"}
    assert report["filtered"] == 1 and report["reasons"] == {
        "field 'answer' must index the choices, got 5": 1
    }
    problems = {"1": rows[0] | {"image": "image.png"}}
    native_src = _write(tmp_path / "native" / "problems.json", problems)
    _write(tmp_path / "native" / "pid_splits.json", {"test": ["1"]})
    (native,), _ = _imported("scienceqa", native_src, tmp_path / "native.jsonl")
    _same_but_images(dataclasses.replace(record, id="1"), native)  # the hub's rows carry no pid


def test_refcoco_boxes_from_xywh_and_the_decoded_image_size(tmp_path: Path) -> None:
    image = _png(size=(64, 48))
    rows = [
        {"question_id": "100", "answer": ["left dog", "dog on the left"], "bbox": [10.0, 20.0, 30.0, 10.0],
         "image": _feature(image)},
        {"question_id": "101", "answer": ["man"], "bbox": [1.0, 2.0, 3.0], "image": _feature(image)},
        {"question_id": "102", "answer": [], "bbox": [1.0, 2.0, 3.0, 4.0], "image": _feature(image)},
    ]  # fmt: skip
    src = _parquet(tmp_path / "RefCOCOplus" / "testA-00000-of-00001.parquet", rows)
    records, report = _imported("lmms-refcoco+", src, tmp_path / "rec.jsonl")
    assert [r.id for r in records] == ["100-0", "100-1"] and {r.task for r in records} == {"refcoco+"}
    first = records[0]
    assert first.box == [10.0, 20.0, 40.0, 30.0] and first.image_size == [64, 48] and first.split == "testA"
    assert first.metric == "box_iou_0.5" and first.group == "100" and first.question == "left dog"
    assert (
        first.prompt
        == "Please provide the bounding box coordinate of the region this sentence describes: left dog."
    )
    assert report["reasons"] == {
        "not enough values to unpack (expected 4, got 3)": 1,
        "field 'answer' must be a non-empty list of referring expressions": 1,
    }


def test_mmbench_rows_with_circular_shifts_match_the_native_import(tmp_path: Path) -> None:
    image = _png()
    rows = [
        {"index": 0, "question": "What is shown?", "hint": "A photo of a farm.", "A": "a dog", "B": "a cat",
         "C": "a cow", "D": "a hen", "answer": "C", "category": "object_localization",
         "L2-category": "perception", "split": "dev", "image": _feature(image)},
        {"index": 1, "question": "Is it red?", "hint": None, "A": "yes", "B": "no", "C": None, "D": None,
         "answer": "A", "category": "image_emotion", "L2-category": "perception", "split": "dev",
         "image": _feature(image)},
        {"index": 3, "question": "Bad answer?", "hint": None, "A": "x", "B": "y", "C": None, "D": None,
         "answer": "E", "category": "ocr", "L2-category": "perception", "split": "dev",
         "image": _feature(image)},
    ]  # fmt: skip
    src = _parquet(tmp_path / "mmbench" / "en" / "dev-00000-of-00001.parquet", rows)
    records, report = _imported("lmms-mmbench", src.parent, tmp_path / "mmb.jsonl")
    assert [r.id for r in records] == ["0", "0-shift1", "0-shift2", "0-shift3", "1", "1-shift1"]
    assert [r.answers[0] for r in records] == ["C", "B", "A", "D", "A", "B"]
    assert (
        records[0].prompt
        == f"A photo of a farm.\nWhat is shown?\nA. a dog\nB. a cat\nC. a cow\nD. a hen\n{MC}"
    )
    assert records[4].prompt == f"Is it red?\nA. yes\nB. no\n{MC}" and records[0].split == "dev"
    assert report["reasons"] == {"field 'answer' 'E' is not one of the options' letters": 1}
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tl2-category"
    line = (
        "0\tWhat is shown?\tA photo of a farm.\ta dog\ta cat\ta cow\ta hen\tC\tobject_localization\t"
        f"{base64.b64encode(image).decode()}\tperception"
    )
    native_src = _write(tmp_path / "native" / "dev.tsv", f"{header}\n{line}\n")
    native, _ = _imported("mmbench", native_src, tmp_path / "native.jsonl")
    for converted, expected in zip(records[:4], native, strict=True):
        _same_but_images(converted, expected)


def test_the_command_converts_and_refuses_what_is_not_parquet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"question_id": "1", "question": "Is there a cat?", "answer": "no", "category": "popular",
             "image": _feature(_png())}]  # fmt: skip
    src = _parquet(tmp_path / "pope" / "test-00000-of-00001.parquet", rows)
    assert main(["eval", "import", "lmms-pope", str(src), str(tmp_path / "pope.jsonl")]) == 0
    assert f"1 records -> file://{tmp_path}/pope.jsonl" in capsys.readouterr().out
    _write(tmp_path / "bad" / "test-00000-of-00001.parquet", "not parquet")
    assert main(["eval", "import", "lmms-pope", str(tmp_path / "bad"), str(tmp_path / "b.jsonl")]) == 2
    assert "test-00000-of-00001.parquet: not a Parquet file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["eval", "import", "lmms-mme", str(tmp_path / "empty"), str(tmp_path / "e.jsonl")]) == 2
    assert "no .parquet file" in capsys.readouterr().err
