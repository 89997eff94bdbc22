"""The synthetic benchmarks (`jobs/data/synth_bench.py`): task files in our format, answers that
follow from the picture, scored right when given in the form the training records teach, and
disjoint from every training record of the set written with them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from sphinxx.evals.metrics import score
from sphinxx.evals.task import TaskRecord, read_records
from sphinxx.jobs.data.synth import SOURCES
from sphinxx.jobs.data.synth_bench import BENCH_RECORDS, TASKS, png_digest, task_records
from sphinxx.jobs.data.synth_tasks import COLORS, fmt
from tests.data.test_synth import records as training_records


def tasks(root: Path) -> dict[str, list[TaskRecord]]:
    return {t.name: read_records((root / "bench" / f"{t.name}.jsonl").read_text(), t.name) for t in TASKS}


def image(record: TaskRecord) -> Image.Image:
    assert record.images[0].startswith("file://")
    return Image.open(record.images[0].removeprefix("file://")).convert("RGB")


def test_every_task_file_is_in_the_task_format_with_its_metric_and_images(synth_root: Path) -> None:
    got = tasks(synth_root)
    assert set(got) >= {"synth_count", "synth_color", "synth_ocr", "synth_box", "synth_exists"}
    for task in TASKS:
        recs = got[task.name]
        assert len(recs) == BENCH_RECORDS and len({r.id for r in recs}) == BENCH_RECORDS
        assert {r.metric for r in recs} == {task.metric} and {r.split for r in recs} == {"synth"}
        assert all(r.scored and len(r.images) == 1 and r.prompt == r.question for r in recs)
        for r in recs[:5]:
            assert image(r).size[0] > 0
    exists = got["synth_exists"]
    assert sum(r.answers == ["yes"] for r in exists) == sum(r.answers == ["no"] for r in exists)


def colors(picture: Image.Image) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in px) for px in np.unique(np.asarray(picture).reshape(-1, 3), axis=0)}


def _components(pixels: np.ndarray, color: tuple[int, int, int]) -> int:
    return int(ndimage.label(np.all(pixels == color, axis=-1))[1])


def test_answers_follow_from_the_picture(synth_root: Path) -> None:
    got = tasks(synth_root)
    for r in got["synth_count"]:  # one solid region of one colour per shape, shapes never overlap
        pixels = np.asarray(image(r))
        assert sum(_components(pixels, c) for c in COLORS.values()) == int(r.answers[0]), r.id
    for r in got["synth_color"]:
        assert COLORS[r.answers[0]] in colors(image(r)), r.id
    for r in got["synth_box"]:  # the box's centre is of the named colour
        assert r.box is not None and r.image_size == list(image(r).size)
        x1, y1, x2, y2 = (int(v) for v in r.box)
        named = r.question.removeprefix("Give the bounding box of the ").split()[0]
        assert image(r).getpixel(((x1 + x2) // 2, (y1 + y2) // 2)) == COLORS[named], r.id
    for r in got["synth_exists"]:
        color = r.question.removeprefix("Is there a ").split()[0]
        if r.answers == ["yes"]:
            assert COLORS[color] in colors(image(r)), r.id
    for r in got["synth_ocr"]:
        assert len(r.answers[0].split()) == 3
        pixels = np.asarray(image(r))
        assert np.all(pixels == COLORS["black"], axis=-1).any()  # the text is drawn


def test_the_answers_the_training_records_teach_score_full_marks_and_others_do_not(
    synth_root: Path,
) -> None:
    got = tasks(synth_root)
    for name, recs in got.items():
        taught = {r.id: r.answers[-1] for r in recs if r.answers}  # the sentence form (or the only one)
        for r in recs:
            if r.box is not None:
                long_side = max(r.image_size or [1])
                taught[r.id] = fmt(*(v / long_side for v in r.box))  # the scenes' answer format
        assert score(recs, taught).headline[1] == 100.0, name
        short = {r.id: r.answers[0] for r in recs if r.answers}
        if short:
            assert score(recs, short).headline[1] == 100.0, name
        assert score(recs, {r.id: "a dog" for r in recs}).headline[1] < 70.0, name  # POPE: yes-ratio 1


def test_no_task_image_or_question_is_a_training_record(synth_root: Path) -> None:
    training_images, training_pairs = set(), set()
    for name, *_ in SOURCES:
        for r in training_records(synth_root, name):
            for rel in r.get("images", []):
                data = (synth_root / name / rel).read_bytes()
                training_images.add(png_digest(data))
                for turn in r["conversations"][::2]:
                    training_pairs.add((png_digest(data), turn["value"].removeprefix("<image>\n")))
    assert training_images
    for recs in tasks(synth_root).values():
        for r in recs:
            digest = png_digest(Path(r.images[0].removeprefix("file://")).read_bytes())
            assert digest not in training_images, r.id
            assert (digest, r.question) not in training_pairs, r.id


def test_a_drawn_image_equal_to_a_training_image_is_redrawn(tmp_path: Path) -> None:
    task = next(t for t in TASKS if t.name == "synth_count")  # its drawing does not depend on the index
    first = [png for _, png in task_records(task, tmp_path.as_uri(), 0, 3, set())]
    again = [png for _, png in task_records(task, tmp_path.as_uri(), 0, 3, {png_digest(first[0])})]
    assert again[:2] == first[1:] and first[0] not in again
