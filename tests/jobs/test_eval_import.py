"""`sphinxx eval import`: small files in each benchmark's official layout, malformed records among
them, imported into task files; bad records are skipped and reported, never fatal, never silent."""

from __future__ import annotations

import base64
import io
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sphinxx.cli import main
from sphinxx.evals.formats import FormatError
from sphinxx.evals.task import TaskRecord, read_records
from sphinxx.jobs.eval_import import import_benchmark
from sphinxx.storage.objectfs import open_fs

SHORT = "\nAnswer the question using a single word or phrase."
MC = "Answer with the option's letter from the given choices directly."


def _write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        data if isinstance(data, bytes) else (data if isinstance(data, str) else json.dumps(data)).encode()
    )
    return path


def _imported(
    fmt: str, src: Path | str, dest: Path | str, **options: Any
) -> tuple[list[TaskRecord], dict[str, Any]]:
    summary = import_benchmark(fmt, str(src), str(dest), **options)
    fs = open_fs(summary.dest)
    records = read_records(fs.read_bytes(summary.dest).decode(), summary.dest)
    report = json.loads(fs.read_bytes(summary.report_uri))
    assert report["records"] == len(records) and report["skipped"] == len(report["problems"])
    return records, report


def _reasons(report: dict[str, Any]) -> list[str]:
    return [f"{p['where']}: {p['reason']}" for p in report["problems"]]


def test_vqav2_questions_and_annotations(tmp_path: Path) -> None:
    questions = {
        "data_subtype": "val2014",
        "questions": [
            {"image_id": 42, "question": "What color is the bus?", "question_id": 420},
            {"image_id": 43, "question": "How many dogs?", "question_id": 430},
            {"image_id": 44, "question": "", "question_id": 440},
            {"question": "Where is the image id?", "question_id": 450},
            {"image_id": 46, "question": "Which annotation?", "question_id": 460},
        ],
    }
    answers = [{"answer": "red", "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]
    annotations = {
        "annotations": [
            {
                "question_id": 420,
                "image_id": 42,
                "answers": answers,
                "answer_type": "other",
                "question_type": "what color",
            },
            {
                "question_id": 430,
                "image_id": 43,
                "answers": [{"answer": "2", "answer_id": i} for i in range(10)],
            },
        ]
    }
    src = _write(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", questions)
    _write(tmp_path / "v2_mscoco_val2014_annotations.json", annotations)
    records, report = _imported("vqav2", src, tmp_path / "out" / "vqav2.jsonl")
    assert [r.id for r in records] == ["420", "430"]
    first = records[0]
    assert first.images == [f"file://{tmp_path}/val2014/COCO_val2014_000000000042.jpg"]
    assert first.prompt == "What color is the bus?" + SHORT and first.metric == "vqa_accuracy"
    assert first.answers == ["red"] * 10 and first.meta == {
        "question_type": "what color",
        "answer_type": "other",
    }
    assert first.split == "val2014"
    assert _reasons(report) == [
        "v2_OpenEnded_mscoco_val2014_questions.json[2]: field 'question' must be a non-empty string, got ''",
        "v2_OpenEnded_mscoco_val2014_questions.json[3]: missing field 'image_id'",
        "v2_OpenEnded_mscoco_val2014_questions.json[4]: no annotation for this question_id",
    ]


def test_vqav2_test_dev_has_no_answers(tmp_path: Path) -> None:
    questions = {
        "data_subtype": "test-dev2015",
        "questions": [{"image_id": 7, "question": "Why?", "question_id": 70}],
    }
    src = _write(tmp_path / "v2_OpenEnded_mscoco_test-dev2015_questions.json", questions)
    records, report = _imported("vqav2", src, tmp_path / "testdev.jsonl", images="s3://coco/images")
    assert records[0].images == ["s3://coco/images/test2015/COCO_test2015_000000000007.jpg"]
    assert not records[0].scored and report["unscored"] == 1
    assert "no annotations" in report["notes"][0]


def test_gqa_questions(tmp_path: Path) -> None:
    data = {
        "201": {
            "imageId": "n161313",
            "question": "Is the cup red?",
            "answer": "yes",
            "types": {"structural": "verify"},
        },
        "202": {"imageId": "n1", "answer": "no"},
        "203": "not a question",
    }
    src = _write(tmp_path / "testdev_balanced_questions.json", data)
    records, report = _imported("gqa", src, tmp_path / "gqa.jsonl")
    assert len(records) == 1 and records[0].split == "testdev_balanced" and records[0].metric == "exact_match"
    assert records[0].images == [f"file://{tmp_path}/images/n161313.jpg"] and records[0].answers == ["yes"]
    assert report["reasons"] == {"missing field 'question'": 1, "not an object: 'not a question'": 1}


def test_textvqa_and_docvqa_data_lists(tmp_path: Path) -> None:
    textvqa = {
        "dataset_name": "textvqa",
        "data": [
            {
                "question": "what brand?",
                "image_id": "0054c91397f2fe05",
                "answers": ["nokia"] * 10,
                "question_id": 1,
                "set_name": "val",
            },
            {
                "question": "what year?",
                "image_id": "x",
                "answers": "1999",
                "question_id": 2,
                "set_name": "val",
            },
        ],
    }
    records, report = _imported(
        "textvqa", _write(tmp_path / "TextVQA_0.5.1_val.json", textvqa), tmp_path / "t.jsonl"
    )
    assert (
        records[0].images == [f"file://{tmp_path}/train_images/0054c91397f2fe05.jpg"]
        and records[0].split == "val"
    )
    assert report["reasons"] == {"field 'answers' must be a list, got str": 1}

    docvqa = {
        "dataset_split": "val",
        "data": [
            {
                "questionId": 49153,
                "question": "What is the date?",
                "image": "documents/pybv0228_81.png",
                "answers": ["1/2/99", "Jan 2 1999"],
            },
            {"questionId": 49154, "question": "Who signed?", "answers": ["J. Smith"]},
        ],
    }
    records, report = _imported(
        "docvqa", _write(tmp_path / "val" / "val_v1.0.json", docvqa), tmp_path / "d.jsonl"
    )
    assert records[0].images == [f"file://{tmp_path}/val/documents/pybv0228_81.png"]
    assert (
        records[0].metric == "anls"
        and records[0].answers == ["1/2/99", "Jan 2 1999"]
        and records[0].split == "val"
    )
    assert report["reasons"] == {"missing field 'image'": 1}


def test_chartqa_list(tmp_path: Path) -> None:
    items = [
        {"imgname": "41699051005347.png", "query": "What is the highest value?", "label": "42"},
        {"imgname": "b.png", "query": "What share?", "label": 3.5},
        {"imgname": "c.png", "label": "x"},
    ]
    records, report = _imported(
        "chartqa", _write(tmp_path / "test" / "test_human.json", items), tmp_path / "c.jsonl"
    )
    assert [r.id for r in records] == ["test_human-0", "test_human-1"] and records[1].answers == ["3.5"]
    assert records[0].images == [f"file://{tmp_path}/test/png/41699051005347.png"]
    assert records[0].metric == "relaxed_accuracy" and report["reasons"] == {"missing field 'query'": 1}


def _py2_pickle(value: Any) -> bytes:
    """A protocol-2 pickle as Python 2 wrote the refs files: strings as byte strings (SHORT_BINSTRING)."""

    def put(v: Any) -> bytes:
        if isinstance(v, dict):
            return b"}(" + b"".join(put(k) + put(x) for k, x in v.items()) + b"u"
        if isinstance(v, list):
            return b"](" + b"".join(put(x) for x in v) + b"e"
        if isinstance(v, str):
            return b"U" + bytes([len(v.encode())]) + v.encode()
        if isinstance(v, float):
            return b"G" + struct.pack(">d", v)
        return b"J" + struct.pack("<i", v)

    return b"\x80\x02" + put(value) + b"."


REFS = [
    {
        "ref_id": 0,
        "ann_id": 100,
        "image_id": 1,
        "split": "val",
        "category_id": 18,
        "sentences": [{"sent": "left dog", "sent_id": 0}, {"sent": "dog on the left", "sent_id": 1}],
    },
    {
        "ref_id": 1,
        "ann_id": 999,
        "image_id": 1,
        "split": "testA",
        "sentences": [{"sent": "man", "sent_id": 2}],
    },
    {"ref_id": 2, "ann_id": 100, "image_id": 1, "split": "testB", "sentences": []},
]
INSTANCES = {
    "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 640, "height": 480}],
    "annotations": [{"id": 100, "image_id": 1, "bbox": [10.0, 20.0, 100.0, 50.0], "category_id": 18}],
}


@pytest.mark.parametrize("refs_name", ["refs(unc).p", "refs.json"])
def test_refcoco_refs_and_instances(tmp_path: Path, refs_name: str) -> None:
    data = _py2_pickle(REFS) if refs_name.endswith(".p") else json.dumps(REFS).encode()
    src = _write(tmp_path / "refcoco" / refs_name, data)
    _write(tmp_path / "refcoco" / "instances.json", INSTANCES)
    records, report = _imported("refcoco+", src, tmp_path / "rec.jsonl", images="s3://coco/train2014")
    assert [r.id for r in records] == ["0-0", "0-1"] and {r.task for r in records} == {"refcoco+"}
    first = records[0]
    assert first.box == [10.0, 20.0, 110.0, 70.0] and first.image_size == [640, 480] and first.split == "val"
    assert first.images == ["s3://coco/train2014/COCO_train2014_000000000001.jpg"]
    assert (
        first.prompt
        == "Please provide the bounding box coordinate of the region this sentence describes: left dog."
    )
    assert report["reasons"] == {
        "ann_id 999 is not in instances.json": 1,
        "field 'sentences' must be a non-empty list": 1,
    }


def test_a_refs_pickle_that_names_a_class_is_refused(tmp_path: Path) -> None:
    from collections import OrderedDict

    src = _write(tmp_path / "refs(umd).p", pickle.dumps([OrderedDict(ref_id=0)], protocol=2))
    _write(tmp_path / "instances.json", INSTANCES)
    with pytest.raises(
        FormatError, match=r"refs\(umd\).p: not a refs pickle of plain data \(refuses collections.OrderedDict"
    ):
        import_benchmark("refcocog", str(src), str(tmp_path / "out.jsonl"))


def test_pope_jsonl(tmp_path: Path) -> None:
    lines = [
        json.dumps(
            {
                "question_id": 1,
                "image": "COCO_val2014_000000310196.jpg",
                "text": "Is there a snowboard in the image?",
                "label": "yes",
            }
        ),
        json.dumps(
            {
                "question_id": 2,
                "image": "COCO_val2014_000000310196.jpg",
                "text": "Is there a cat?",
                "label": "maybe",
            }
        ),
        "{broken",
        "",
    ]
    src = _write(tmp_path / "coco_pope_adversarial.json", "\n".join(lines))
    records, report = _imported("pope", src, tmp_path / "pope.jsonl", images="/data/coco/val2014")
    assert len(records) == 1 and records[0].category == "adversarial" and records[0].answers == ["yes"]
    assert records[0].images == ["file:///data/coco/val2014/COCO_val2014_000000310196.jpg"]
    assert records[0].prompt == "Is there a snowboard in the image?" + SHORT
    assert [p["where"] for p in report["problems"]] == [
        "coco_pope_adversarial.json:2",
        "coco_pope_adversarial.json:3",
    ]
    assert "the answer must be yes or no, got 'maybe'" in report["reasons"]


def test_mme_category_files(tmp_path: Path) -> None:
    q = "Is there a train in this image? Please answer yes or no."
    _write(
        tmp_path / "results" / "existence.txt",
        f"000000006040.jpg\t{q}\tYes\n000000006040.jpg\t{q}\tNo\nonly\ttwo\n",
    )
    _write(tmp_path / "results" / "artwork.txt", f"10002.jpg\t{q}\tYes\textra answer\n10002.jpg\t{q}\tNo\n")
    _write(tmp_path / "results" / "unknown_category.txt", f"1.jpg\t{q}\tperhaps\n")
    records, report = _imported(
        "mme", tmp_path / "results", tmp_path / "mme.jsonl", images=str(tmp_path / "MME")
    )
    assert [r.id for r in records] == [
        "artwork/10002.jpg/1",
        "artwork/10002.jpg/2",
        "existence/000000006040.jpg/1",
        "existence/000000006040.jpg/2",
    ]
    assert records[0].images == [f"file://{tmp_path}/MME/artwork/images/10002.jpg"]
    assert records[2].images == [f"file://{tmp_path}/MME/existence/000000006040.jpg"]
    assert records[2].group == "existence/000000006040.jpg" and records[3].answers == ["No"]
    assert report["reasons"] == {
        "expected image<TAB>question<TAB>answer, got 2 columns": 1,
        "the answer must be yes or no, got 'perhaps'": 1,
    }
    assert "'unknown_category' is not an MME category" in report["notes"][0]


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 10, 10)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_mmbench_tsv_to_s3_with_images_and_circular_shifts(s3_bucket: str) -> None:
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage\tl2-category\tsplit"
    image = _png()
    rows = [
        "0\tWhat is shown?\tA photo of a farm.\ta dog\ta cat\ta cow\ta hen\tC\tobject_localization\t"
        f"{image}\tperception\tdev",
        "1\tIs it red?\tnan\tyes\tno\tnan\tnan\tA\timage_emotion\t0\tperception\tdev",
        "2\tBroken image?\tnan\tx\ty\tnan\tnan\tA\tocr\t!!!not-base64\tperception\tdev",
        f"3\tBad answer?\tnan\tx\ty\tnan\tnan\tE\tocr\t{image}\tperception\tdev",
    ]
    fs = open_fs(f"s3://{s3_bucket}/x")
    src = f"s3://{s3_bucket}/mmbench/MMBench_DEV_EN.tsv"
    fs.write_bytes(src, ("\n".join([header, *rows]) + "\n").encode())
    records, report = _imported("mmbench", src, f"s3://{s3_bucket}/tasks/mmbench_dev.jsonl")
    assert [r.id for r in records] == ["0", "0-shift1", "0-shift2", "0-shift3", "1", "1-shift1"]
    assert [r.answers[0] for r in records] == ["C", "B", "A", "D", "A", "B"]  # the right option moves
    assert records[1].choices == ["a cat", "a cow", "a hen", "a dog"] and {r.group for r in records[:4]} == {
        "0"
    }
    assert (
        records[0].prompt
        == f"A photo of a farm.\nWhat is shown?\nA. a dog\nB. a cat\nC. a cow\nD. a hen\n{MC}"
    )
    assert records[4].prompt == f"Is it red?\nA. yes\nB. no\n{MC}" and records[4].category == "image_emotion"
    assert records[0].images == [f"s3://{s3_bucket}/tasks/mmbench_dev.images/0.png"]
    written = fs.read_bytes(records[4].images[0])
    assert Image.open(io.BytesIO(written)).size == (4, 3)  # row 1 points at row 0's image
    assert report["images_written"] == 2
    assert report["reasons"] == {
        "field 'image' is not base64": 1,
        "field 'answer' 'E' is not one of the options' letters": 1,
    }


def test_scienceqa_img_problems_and_splits(tmp_path: Path) -> None:
    problems = {
        "1": {
            "question": "Which is a mammal?",
            "choices": ["shark", "whale", "trout"],
            "answer": 1,
            "hint": "Look at the picture.",
            "image": "image.png",
            "subject": "natural science",
            "grade": "grade4",
        },
        "2": {"question": "Text only?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None},
        "3": {
            "question": "Bad answer?",
            "choices": ["a", "b"],
            "answer": 5,
            "hint": "",
            "image": "image.png",
        },
    }
    src = _write(tmp_path / "problems.json", problems)
    _write(
        tmp_path / "pid_splits.json",
        {"train": [], "val": [], "test": ["1", "2", "3", "4"], "minitest": ["1"]},
    )
    records, report = _imported("scienceqa", src, tmp_path / "sqa.jsonl")
    (record,) = records
    assert (
        record.id == "1"
        and record.split == "test"
        and record.answers == ["B"]
        and record.task == "scienceqa_img"
    )
    assert record.images == [f"file://{tmp_path}/images/test/1/image.png"]
    assert (
        record.prompt
        == f"Context: Look at the picture.\nWhich is a mammal?\nA. shark\nB. whale\nC. trout\n{MC}"
    )
    assert record.answer_prefix == "The answer is"
    assert report["filtered"] == 1  # problem 2 has no image: not part of ScienceQA-IMG
    assert report["reasons"] == {
        "field 'answer' must index the choices, got 5": 1,
        "listed in pid_splits.json but not in problems.json": 1,
    }
    with pytest.raises(FormatError, match=r"no record of split 'val'; the source has \['test'\]"):
        import_benchmark("scienceqa", str(src), str(tmp_path / "val.jsonl"), split="val")


def test_the_command_reports_bad_records_and_unreadable_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write(
        tmp_path / "testdev_balanced_questions.json",
        {"1": {"imageId": "n1", "question": "Red?", "answer": "no"}, "2": {}},
    )
    assert (
        main(["eval", "import", "gqa", str(src), str(tmp_path / "gqa.jsonl"), "--images", "s3://gqa/images"])
        == 0
    )
    out, err = capsys.readouterr()
    assert f"1 records -> file://{tmp_path}/gqa.jsonl" in out
    assert (
        f"1 bad records skipped (see file://{tmp_path}/gqa.jsonl.report.json)" in err
        and "1 x missing field" in err
    )
    assert main(["eval", "import", "vqav2", str(tmp_path / "missing.json"), str(tmp_path / "v.jsonl")]) == 2
    assert f"error: file://{tmp_path}/missing.json: no such file" in capsys.readouterr().err
    _write(tmp_path / "broken.json", "{not json")
    assert main(["eval", "import", "chartqa", str(tmp_path / "broken.json"), str(tmp_path / "c.jsonl")]) == 2
    assert "broken.json: not JSON" in capsys.readouterr().err
