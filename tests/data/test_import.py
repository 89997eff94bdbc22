"""`sphinxx data import`: small files in each data set's published layout, malformed items among
them, imported into sources of our format; bad items are skipped and reported, never fatal, never
silent; an interrupted import run again gives the same bytes; S3 in and out; the result trains."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from sphinxx.cli import main
from sphinxx.evals.formats import FormatError
from sphinxx.jobs.data import cli as data_cli
from sphinxx.jobs.data import importers
from sphinxx.jobs.data.format import parse_record, read_manifest
from sphinxx.jobs.data.importer import ImportOptions, import_source
from sphinxx.model.flavors import build_sphinx
from sphinxx.schema.run import load_config
from sphinxx.storage.objectfs import open_fs
from tests.jobs._tiny import run_data
from tests.jobs.test_eval_import import _reasons, _write

SHORT = "\nAnswer the question using a single word or phrase."
REFER = "Please provide the bounding box coordinate of the region this sentence describes: {}."


def _png(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", size, (20, 120, 200)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def _records(dest: Path | str) -> list[dict[str, Any]]:
    """Every record of the source at `dest`, checked by the source format's own parser."""
    root = str(dest)
    fs, manifest = open_fs(root), read_manifest(root)
    out = []
    for shard in manifest.shards:
        for n, line in enumerate(fs.read_bytes(f"{root.rstrip('/')}/{shard.path}").splitlines()):
            parse_record(line, f"{shard.path}:{n + 1}")
            out.append(json.loads(line))
    assert len(out) == manifest.num_records
    return out


def _run(fmt: str, src: Path | str, dest: Path | str, **options: Any) -> tuple[list[dict[str, Any]], dict]:
    result = import_source(ImportOptions(fmt, str(src), str(dest), **options))
    report = json.loads(open_fs(result.report_uri).read_bytes(result.report_uri))
    assert report == result.report
    records = _records(dest)
    assert report["records"] == len(records)
    assert report["skipped"] == sum(report["reasons"].values()) == len(report["problems"])
    return records, report


def _turns(record: dict[str, Any]) -> list[tuple[str, str]]:
    c = record["conversations"]
    return [(c[i]["value"], c[i + 1]["value"]) for i in range(0, len(c), 2)]


def test_the_command_lists_every_importer() -> None:
    assert data_cli.IMPORT_FORMATS == tuple(importers.FORMATS)


def test_llava_and_sharegpt_dialogs(tmp_path: Path) -> None:
    items = [
        {
            "id": "000000033471",
            "image": "000000033471.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is the bus doing?"},
                {"from": "gpt", "value": "It is parked."},
                {"from": "human", "value": "Which colour?"},
                {"from": "gpt", "value": "White."},
            ],
        },
        {
            "id": "sg1",
            "conversations": [
                {"from": "gpt", "value": "Hi!"},
                {"from": "human", "value": "2+2?"},
                {"from": "gpt", "value": "4"},
                {"from": "human", "value": "thanks"},
            ],
        },
        {
            "id": "bad1",
            "image": "x.jpg",
            "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}],
        },
        {"id": "bad2", "conversations": [{"from": "human", "value": "a"}, {"from": "robot", "value": "b"}]},
        {
            "id": "bad3",
            "image": ["a.jpg", "b.jpg"],
            "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
        },
        {"id": "bad4", "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": " "}]},
        {"id": "bad5"},
        "not an object",
    ]
    src = _write(tmp_path / "llava_instruct_150k.json", items)
    records, report = _run("llava", src, tmp_path / "llava", images="s3://data/coco/train2017")
    assert [r["id"] for r in records] == ["000000033471", "sg1"]
    assert records[0]["images"] == ["s3://data/coco/train2017/000000033471.jpg"]
    assert _turns(records[0]) == [
        ("<image>\nWhat is the bus doing?", "It is parked."),
        ("Which colour?", "White."),
    ]
    assert _turns(records[1]) == [("2+2?", "4")] and "images" not in records[1]
    assert (
        report["trimmed_turns"] == 2 and report["with_images"] == 1 and report["domain"] == "vision-language"
    )
    assert _reasons(report) == [
        "llava_instruct_150k.json[2]: turn 0: human and assistant turns do not alternate",
        "llava_instruct_150k.json[3]: turn 1: unknown role 'robot'",
        "llava_instruct_150k.json[4]: 2 images; the model takes at most one image per sample",
        "llava_instruct_150k.json[5]: turn 0: values must be strings, the answer non-empty",
        "llava_instruct_150k.json[6]: missing field 'conversations'",
        "llava_instruct_150k.json[7]: not an object: 'not an object'",
    ]
    text_only, report = _run("sharegpt", src, tmp_path / "sharegpt")
    assert [r["id"] for r in text_only] == ["sg1"] and report["domain"] == "language"
    assert "llava_instruct_150k.json id 000000033471: names an image; import image dialogs as 'llava'" in (
        _reasons(report)
    )


def test_coco_captions(tmp_path: Path) -> None:
    captions = {
        "info": {},
        "images": [
            {"id": 9, "file_name": "000000000009.jpg", "width": 640, "height": 480},
            {"id": 25, "file_name": "000000000025.jpg", "width": 500, "height": 375},
        ],
        "annotations": [
            {"id": 1, "image_id": 9, "caption": "A plate of food. "},
            {"id": 2, "image_id": 25, "caption": "A giraffe eating leaves."},
            {"id": 3, "image_id": 77, "caption": "No such image."},
            {"id": 4, "image_id": 9, "caption": ""},
        ],
    }
    src = _write(tmp_path / "coco" / "annotations" / "captions_train2017.json", captions)
    records, report = _run("coco-captions", src, tmp_path / "out")
    prompt = "Provide a one-sentence caption for the provided image."
    assert [(r["id"], _turns(r), r["images"], r["image_sizes"]) for r in records] == [
        (
            "coco-1",
            [(prompt, "A plate of food.")],
            [f"file://{tmp_path}/coco/train2017/000000000009.jpg"],
            [[640, 480]],
        ),
        (
            "coco-2",
            [(prompt, "A giraffe eating leaves.")],
            [f"file://{tmp_path}/coco/train2017/000000000025.jpg"],
            [[500, 375]],
        ),
    ]
    assert _reasons(report) == [
        "captions_train2017.json[2]: image_id 77 is not in the file's images",
        "captions_train2017.json[3]: field 'caption' must be a non-empty string, got ''",
    ]


def test_vqav2_pairs_the_two_files_as_they_stream(tmp_path: Path) -> None:
    questions = {
        "data_subtype": "train2014",
        "questions": [
            {"image_id": 42, "question": "What color is the bus?", "question_id": 420},
            {"image_id": 43, "question": "How many dogs?", "question_id": 430},
            {"image_id": 44, "question": "Is it raining?", "question_id": 440},
            {"question": "Where is the image id?", "question_id": 450},
            {"image_id": 46, "question": "Which annotation?", "question_id": 460},
        ],
    }
    # 440 before 430: out of order within the window; 440 without multiple_choice_answer (OK-VQA):
    # the most frequent of its answers; 460 has none.
    annotations = {
        "annotations": [
            {"question_id": 420, "image_id": 42, "multiple_choice_answer": "red", "answers": []},
            {"question_id": 440, "image_id": 44, "answers": [{"answer": a} for a in ("yes", "no", "no")]},
            {"question_id": 430, "image_id": 43, "multiple_choice_answer": "2", "answers": []},
            {"question_id": 450, "image_id": 45, "multiple_choice_answer": "there", "answers": []},
        ]
    }
    src = _write(tmp_path / "v2_OpenEnded_mscoco_train2014_questions.json", questions)
    _write(tmp_path / "v2_mscoco_train2014_annotations.json", annotations)
    records, report = _run("vqav2", src, tmp_path / "out", images="s3://data/coco")
    assert [(r["id"], _turns(r), r["images"]) for r in records] == [
        (
            "vqav2-420",
            [("What color is the bus?" + SHORT, "red")],
            ["s3://data/coco/train2014/COCO_train2014_000000000042.jpg"],
        ),
        (
            "vqav2-430",
            [("How many dogs?" + SHORT, "2")],
            ["s3://data/coco/train2014/COCO_train2014_000000000043.jpg"],
        ),
        (
            "vqav2-440",
            [("Is it raining?" + SHORT, "no")],
            ["s3://data/coco/train2014/COCO_train2014_000000000044.jpg"],
        ),
    ]
    assert _reasons(report) == [
        "v2_OpenEnded_mscoco_train2014_questions.json[3]: missing field 'image_id'",
        "v2_OpenEnded_mscoco_train2014_questions.json[4]: no annotation for question_id 460 "
        "(the files must list them in the same order)",
    ]
    (tmp_path / "v2_mscoco_train2014_annotations.json").unlink()
    with pytest.raises(FormatError, match="training needs the answers"):
        import_source(ImportOptions("vqav2", str(src), str(tmp_path / "x")))


def test_textvqa_and_docvqa(tmp_path: Path) -> None:
    textvqa = {
        "dataset_name": "textvqa",
        "data": [
            {
                "question_id": 1,
                "image_id": "abc",
                "question": "What brand?",
                "set_name": "train",
                "answers": ["nokia", "Nokia", "nokia", "samsung", "nokia"] + ["Nokia"] * 5,
                "image_width": 1024,
                "image_height": 768,
            },
            {
                "question_id": 2,
                "image_id": "def",
                "question": "What year?",
                "set_name": "train",
                "answers": [],
            },
        ],
    }
    src = _write(tmp_path / "TextVQA_0.5.1_train.json", textvqa)
    records, report = _run("textvqa", src, tmp_path / "textvqa", images="s3://data/textvqa")
    assert [(r["id"], _turns(r), r["images"], r["image_sizes"]) for r in records] == [
        (
            "textvqa-1",
            [("What brand?" + SHORT, "Nokia")],
            ["s3://data/textvqa/train_images/abc.jpg"],
            [[1024, 768]],
        ),
    ]  # Nokia 6 times, nokia 3: the most frequent answer as written
    assert _reasons(report) == [
        "TextVQA_0.5.1_train.json[1]: field 'answers' must be a non-empty list of strings, got []"
    ]
    docvqa = {
        "dataset_split": "train",
        "data": [
            {
                "questionId": 7,
                "question": "What is the date?",
                "image": "documents/xnbl0037_1.png",
                "answers": ["1/8/93", "January 8, 1993"],
                "data_split": "train",
            },
            {"questionId": 8, "image": "documents/a.png", "answers": ["x"]},
        ],
    }
    src = _write(tmp_path / "docvqa" / "train_v1.0.json", docvqa)
    records, report = _run("docvqa", src, tmp_path / "docvqa_out", domain="ocr", name="docvqa-train")
    assert read_manifest(str(tmp_path / "docvqa_out")).domain == "ocr" == report["domain"]
    assert report["name"] == "docvqa-train"
    assert [(r["id"], _turns(r), r["images"]) for r in records] == [
        (
            "docvqa-7",
            [("What is the date?" + SHORT, "1/8/93")],
            [f"file://{tmp_path}/docvqa/documents/xnbl0037_1.png"],
        ),
    ]
    assert _reasons(report) == ["train_v1.0.json[1]: missing field 'question'"]


def _refcoco_files(root: Path) -> Path:
    refs = [
        {
            "ref_id": 1,
            "ann_id": 100,
            "image_id": 5,
            "split": "train",
            "sentences": [{"sent": "the left dog", "sent_id": 11}, {"sent": "brown dog.", "sent_id": 12}],
        },
        {
            "ref_id": 2,
            "ann_id": 200,
            "image_id": 6,
            "split": "train",
            "sentences": [{"sent": "tall man", "sent_id": 21}],
        },
        {
            "ref_id": 3,
            "ann_id": 100,
            "image_id": 5,
            "split": "testA",
            "sentences": [{"sent": "test dog", "sent_id": 31}],
        },
        {
            "ref_id": 4,
            "ann_id": 999,
            "image_id": 5,
            "split": "train",
            "sentences": [{"sent": "ghost", "sent_id": 41}],
        },
        {"ref_id": 5, "ann_id": 100, "image_id": 5, "split": "train", "sentences": []},
    ]
    instances = {
        "images": [
            {"id": 5, "file_name": "COCO_train2014_000000000005.jpg", "width": 640, "height": 480},
            {"id": 6, "file_name": "COCO_train2014_000000000006.jpg", "width": 300, "height": 600},
            {"id": 7, "file_name": "unused.jpg", "width": 10, "height": 10},
        ],
        "annotations": [
            {"id": 100, "image_id": 5, "bbox": [64.0, 96.0, 256.0, 192.0], "category_id": 18},
            {"id": 200, "image_id": 6, "bbox": [30, 60, 120, 480], "category_id": 1},
            {"id": 300, "image_id": 7, "bbox": [0, 0, 1, 1], "category_id": 1},
        ],
    }
    _write(root / "instances.json", instances)
    return _write(root / "refs(unc).p", pickle.dumps(refs, protocol=2))


def test_refcoco_boxes_in_the_papers_coordinate_text(tmp_path: Path) -> None:
    src = _refcoco_files(tmp_path / "refcoco")
    records, report = _run("refcoco", src, tmp_path / "out", images="s3://data/coco/train2014")
    # [64, 96, 256 wide, 192 high] on 640 x 480 -> corners (64, 96), (320, 288) over the long side 640;
    # [30, 60, 120, 480] on 300 x 600 -> (30, 60), (150, 540) over 600.
    assert [(r["id"], _turns(r), r["image_sizes"]) for r in records] == [
        ("refcoco-1-11", [(REFER.format("the left dog"), "[0.10, 0.15, 0.50, 0.45]")], [[640, 480]]),
        ("refcoco-1-12", [(REFER.format("brown dog"), "[0.10, 0.15, 0.50, 0.45]")], [[640, 480]]),
        ("refcoco-2-21", [(REFER.format("tall man"), "[0.05, 0.10, 0.25, 0.90]")], [[300, 600]]),
    ]
    assert records[2]["images"] == ["s3://data/coco/train2014/COCO_train2014_000000000006.jpg"]
    assert report["domain"] == "vision"
    assert _reasons(report) == [
        "refs(unc).p[3]: ann_id 999 is not in instances.json",
        "refs(unc).p[4]: field 'sentences' must be a non-empty list",
    ]
    test_split, _ = _run("refcoco", src, tmp_path / "testA", split="testA")
    assert [r["id"] for r in test_split] == ["refcoco-3-31"]


def test_a_source_that_stops_being_json_stops_the_import_naming_it(tmp_path: Path, capsys) -> None:
    good = [
        {"id": str(i), "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
        for i in range(6)
    ]
    src = _write(tmp_path / "cut.json", json.dumps(good).encode()[:-40])
    code = main(["data", "import", "sharegpt", str(src), str(tmp_path / "out"), "--shard-size", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "cut.json: not valid JSON after 5 items at 'item'" in err, err
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert json.loads((tmp_path / "out" / "import.progress.json").read_text())["records"] == 4
    code = main(["data", "import", "vqav2", str(tmp_path / "absent.json"), str(tmp_path / "o2")])
    assert code == 2 and "absent.json: no such file" in capsys.readouterr().err
    code = main(["data", "import", "sharegpt", str(src), str(tmp_path / "out"), "--shard-size", "3"])
    assert code == 2 and "records_per_shard differ" in capsys.readouterr().err


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_an_interrupted_import_run_again_gives_the_same_source(tmp_path: Path) -> None:
    n = 20_000
    items = [
        {
            "id": str(i),
            "conversations": [
                {"from": "human", "value": f"What is {i} + 1?"},
                {"from": "gpt", "value": str(i + 1)},
            ],
        }
        if i % 997
        else {"id": str(i)}
        for i in range(n)
    ]
    src = _write(tmp_path / "sharegpt.json", items)
    args = [
        "data",
        "import",
        "sharegpt",
        str(src),
        str(tmp_path / "cut"),
        "--shard-size",
        "50",
        "--name",
        "dialogs",
    ]
    proc = subprocess.Popen([sys.executable, "-m", "sphinxx", *args], stdout=subprocess.DEVNULL)
    progress = tmp_path / "cut" / "import.progress.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists() and json.loads(progress.read_text())["records"] >= 1000:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = json.loads(progress.read_text())
    assert not written["complete"] and 0 < written["records"] < n - n // 997 - 1, "not cut half-way"
    assert not (tmp_path / "cut" / "manifest.json").exists()
    assert main(args) == 0
    assert (
        main(
            [
                "data",
                "import",
                "sharegpt",
                str(src),
                str(tmp_path / "whole"),
                "--shard-size",
                "50",
                "--name",
                "dialogs",
            ]
        )
        == 0
    )
    cut, whole = _tree(tmp_path / "cut"), _tree(tmp_path / "whole")
    assert cut.keys() == whole.keys()
    for name in cut:  # the report and the progress name DEST; everything else is byte for byte
        if name.startswith("import."):
            cut[name] = cut[name].replace(b"/cut", b"/whole")
        assert cut[name] == whole[name], name
    report = json.loads(whole["import.report.json"])
    assert report["records"] == n - 21 and report["skipped"] == 21  # i = 0, 997, ..., 19940
    assert main(args) == 0  # finished: run again, nothing to do


def test_s3_source_and_destination_with_copied_images(s3_bucket: str, tmp_path: Path) -> None:
    local = tmp_path / "coco"
    _png(local / "train2014" / "COCO_train2014_000000000005.jpg", (640, 480))
    src = _refcoco_files(local)
    fs = open_fs(f"s3://{s3_bucket}")
    for path in (src, local / "instances.json", local / "train2014" / "COCO_train2014_000000000005.jpg"):
        fs.write_bytes(f"s3://{s3_bucket}/raw/{path.relative_to(local)}", path.read_bytes())
    dest = f"s3://{s3_bucket}/sources/refcoco"
    records, report = _run(
        "refcoco",
        f"s3://{s3_bucket}/raw/refs(unc).p",
        dest,
        images=f"s3://{s3_bucket}/raw/train2014",
        copy_images=True,
    )
    assert [r["images"] for r in records] == [["images/COCO_train2014_000000000005.jpg"]] * 2
    copied = fs.read_bytes(f"{dest}/images/COCO_train2014_000000000005.jpg")
    assert copied == (local / "train2014" / "COCO_train2014_000000000005.jpg").read_bytes()
    assert report["images_copied"] is True and report["with_images"] == 2
    again = import_source(
        ImportOptions(
            "refcoco",
            f"s3://{s3_bucket}/raw/refs(unc).p",
            dest,
            images=f"s3://{s3_bucket}/raw/train2014",
            copy_images=True,
        )
    )
    assert again.finished_before and again.report == report  # run again: nothing to do
    assert "id refcoco-2-21: s3://" in _reasons(report)[0] and report["reasons"]["image not found"] == 1


@pytest.fixture(scope="module")
def imported_mixture(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A run config over two imported sources: RefCOCO (with its images) and ShareGPT dialogs."""
    tmp_path = tmp_path_factory.mktemp("mixture")
    _png(tmp_path / "coco" / "train2014" / "COCO_train2014_000000000005.jpg", (640, 480))
    _png(tmp_path / "coco" / "train2014" / "COCO_train2014_000000000006.jpg", (300, 600))
    src = _refcoco_files(tmp_path / "refcoco")
    _run("refcoco", src, tmp_path / "grounding", images=str(tmp_path / "coco" / "train2014"))
    dialogs = [
        {
            "id": str(i),
            "conversations": [{"from": "human", "value": f"Say {i}."}, {"from": "gpt", "value": f"{i}"}],
        }
        for i in range(5)
    ]
    _run("sharegpt", _write(tmp_path / "sg.json", dialogs), tmp_path / "dialog")
    sources = [
        {"name": "grounding", "uri": str(tmp_path / "grounding"), "domain": "vision"},
        {"name": "dialog", "uri": str(tmp_path / "dialog"), "domain": "language"},
    ]
    return load_config(
        preset="debug",
        data={"data": {"sources": sources, "seq_len": 1024, "canvas": 224}},
        overrides=["train.global_batch=4", "train.micro_batch=4", "train.steps=2"],
    )


def test_imported_sources_read_back_as_training_samples(imported_mixture, synth_tokenizer) -> None:
    stream = run_data(imported_mixture, tokenizer=synth_tokenizer)
    batches = list(stream)
    assert stream.stats.records == 8 and stream.stats.bad == {} and stream.stats.samples == 8
    assert stream.stats.images == 3 and sum(b.num_samples for b in batches) == 8


@pytest.mark.slow  # building the debug model's vision towers takes ~10 s on 2 shared cores
def test_an_imported_batch_trains_a_step(imported_mixture, synth_tokenizer) -> None:
    """One optimizer step of the debug model on the first imported batch: finite loss, weights move."""
    batch = next(iter(run_data(imported_mixture, tokenizer=synth_tokenizer, num_steps=1)))
    model = build_sphinx("debug", vocab_size=len(synth_tokenizer))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    out = model(batch.batch)
    assert out.num_targets == batch.num_targets > 0 and out.loss.isfinite()
    out.loss.backward()
    torch.optim.SGD(trainable.values(), lr=0.1).step()
    moved = [n for n, p in trainable.items() if not torch.equal(p, before[n])]
    assert "projector" in " ".join(moved) and len(moved) > len(trainable) // 2, moved


def test_memory_stays_bounded_by_the_shard_not_the_file(tmp_path: Path) -> None:
    """A 19 MiB file of 2,000 long dialogs: the import's peak Python allocation stays a small
    fraction of the file (items are parsed one at a time, one shard of lines is held)."""
    import tracemalloc

    answer = "word " * 2000  # 10 kB
    items = [
        {
            "id": str(i),
            "conversations": [{"from": "human", "value": f"Tell {i}."}, {"from": "gpt", "value": answer}],
        }
        for i in range(2000)
    ]
    src = _write(tmp_path / "big.json", items)
    size = src.stat().st_size
    assert size > 16 * 2**20
    tracemalloc.start()
    try:
        result = import_source(
            ImportOptions("sharegpt", str(src), str(tmp_path / "out"), records_per_shard=16)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.report["records"] == 2000
    assert peak < size / 8, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB file"
