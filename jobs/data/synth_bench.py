"""Benchmark tasks of the synthetic set: questions whose answers follow from the picture.

`sphinxx data synth OUT` writes them beside the training sources, in the task format
(docs/evaluation.md, "The task format"), one file per task with its images:

    OUT/bench/<task>.jsonl           BENCH_RECORDS records, split "synth"
    OUT/bench/images/<task>/<i>.png

| task | question (the training set's phrasing) | metric |
|---|---|---|
| synth_count | How many shapes are in the image? | exact_match ("3" or "There are 3 shapes.") |
| synth_color | What color is the circle? | exact_match ("red" or "The circle is red.") |
| synth_ocr | What text is written in the image? (one line of three words) | anls |
| synth_box | Give the bounding box of the red circle. | box_iou_0.5 (RefCOCO's Acc@0.5) |
| synth_exists | Is there a red circle in the image? (half yes, half no) | pope |
| synth_chart | What is the value of C? (bar chart or table) | relaxed_accuracy ("23" or "C is 23.") |

The first five ask what the training records ask (scenes, captions, ocr, charts), in their words,
so a point that learned them can answer; the references hold the short answer and the sentence the
training answers use. `synth_exists` is the one question the training set never asks (POPE's
yes/no existence): a model answers it zero-shot, and an answer that says neither yes nor no reads
as "yes" (POPE's rule), so a point that has not learned the form scores accuracy 50, F1 66.7.

Disjoint from training: record i of task t is drawn from Random(f"{seed}:bench:{t}:{k}"), a seed
stream no training record uses, and a drawn image whose PNG bytes equal a training image of the
set written with it is dropped and the next k drawn (`write_bench`), so no task image is a
training image and no task (image, question) pair a training pair.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from sphinxx.evals.task import TaskRecord, dump_line
from sphinxx.jobs.data.synth_tasks import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    WORDS,
    _canvas,
    _count,
    _draw_bars,
    _draw_shape,
    _draw_table,
    _font,
    _place_shapes,
)
from sphinxx.storage import uri as uri_mod
from sphinxx.storage.objectfs import open_fs

BENCH_DIR = "bench"
BENCH_RECORDS = 40  # per task: even, so that synth_exists is half yes, half no
SPLIT = "synth"


@dataclass(frozen=True)
class Item:
    """One drawn question: the picture and what the record says about it."""

    image: Image.Image
    question: str
    answers: list[str]
    box: list[float] | None = None
    category: str = ""


@dataclass(frozen=True)
class SynthTask:
    name: str
    metric: str
    draw: Callable[[random.Random, int], Item]  # (rng, record index) -> item


def _shapes_image(rng: random.Random, low: int, high: int) -> tuple[Image.Image, list[dict[str, Any]]]:
    w, h, (image, _bg) = _canvas(rng, True)
    shapes = _place_shapes(rng, w, h, rng.randint(low, high))
    for shape in shapes:
        _draw_shape(image, shape)
    return image, shapes


def count_item(rng: random.Random, i: int) -> Item:
    image, shapes = _shapes_image(rng, 1, 4)
    n = len(shapes)
    return Item(image, "How many shapes are in the image?", [str(n), f"There {_count(n)}."])


def color_item(rng: random.Random, i: int) -> Item:
    while True:
        image, shapes = _shapes_image(rng, 1, 3)
        unique = [s for s in shapes if sum(t["shape"] == s["shape"] for t in shapes) == 1]
        if unique:
            break
    shape = rng.choice(unique)
    kind, color = shape["shape"], shape["color"]
    return Item(image, f"What color is the {kind}?", [color, f"The {kind} is {color}."])


def ocr_item(rng: random.Random, i: int) -> Item:
    line = " ".join(rng.choice(WORDS) for _ in range(3))
    font = _font(16)
    width = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(line, font=font)) + 16
    image = Image.new("RGB", (width, 32), BACKGROUNDS[rng.choice(list(BACKGROUNDS))])
    ImageDraw.Draw(image).text((8, 6), line, fill=COLORS["black"], font=font)
    return Item(image, "What text is written in the image?", [line])


def box_item(rng: random.Random, i: int) -> Item:
    image, shapes = _shapes_image(rng, 1, 4)
    shape = rng.choice(shapes)
    question = f"Give the bounding box of the {shape['color']} {shape['shape']}."
    return Item(image, question, [], box=[float(v) for v in shape["box"]])


def exists_item(rng: random.Random, i: int) -> Item:
    """Yes for even i (a shape that is there), no for odd i (a colour and shape that is not)."""
    image, shapes = _shapes_image(rng, 1, 4)
    if i % 2 == 0:
        color, kind = (lambda s: (s["color"], s["shape"]))(rng.choice(shapes))
    else:
        present = {(s["color"], s["shape"]) for s in shapes}
        color, kind = rng.choice(sorted({(c, k) for c in COLORS for k in SHAPES} - present))
    answer = "yes" if i % 2 == 0 else "no"
    return Item(image, f"Is there a {color} {kind} in the image?", [answer], category="random")


def chart_item(rng: random.Random, i: int) -> Item:
    labels = [chr(ord("A") + k) for k in range(rng.randint(3, 6))]
    values = {label: rng.randint(1, 60) for label in labels}
    image = _draw_table(labels, values) if rng.random() < 0.4 else _draw_bars(rng, labels, values)
    x = rng.choice(labels)
    return Item(image, f"What is the value of {x}?", [str(values[x]), f"{x} is {values[x]}."])


TASKS: tuple[SynthTask, ...] = (
    SynthTask("synth_count", "exact_match", count_item),
    SynthTask("synth_color", "exact_match", color_item),
    SynthTask("synth_ocr", "anls", ocr_item),
    SynthTask("synth_box", "box_iou_0.5", box_item),
    SynthTask("synth_exists", "pope", exists_item),
    SynthTask("synth_chart", "relaxed_accuracy", chart_item),
)


def png_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def task_records(
    task: SynthTask, root: str, seed: int, count: int, avoid: Container[bytes]
) -> list[tuple[TaskRecord, bytes]]:
    """`count` records of `task` with their PNG bytes; images under `root`/images/<task>/.

    A drawn image whose digest is in `avoid` (the training images) is dropped and redrawn."""
    out: list[tuple[TaskRecord, bytes]] = []
    k = 0
    while len(out) < count:
        i = len(out)
        item = task.draw(random.Random(f"{seed}:bench:{task.name}:{k}"), i)
        k += 1
        png = _png(item.image)
        if png_digest(png) in avoid:
            continue
        uri = uri_mod.join(root, f"images/{task.name}/{i:04d}.png")
        record = TaskRecord(
            id=f"{task.name}-{i:04d}", task=task.name, split=SPLIT, images=[uri], question=item.question,
            prompt=item.question, metric=task.metric, answers=item.answers, box=item.box,
            image_size=list(item.image.size) if item.box is not None else None, category=item.category,
        )  # fmt: skip
        out.append((record, png))
    return out


def write_bench(out: str, seed: int, avoid: Container[bytes], count: int = BENCH_RECORDS) -> dict[str, str]:
    """Write every task file and its images under `out`/bench; returns task name -> file URI."""
    root = uri_mod.join(uri_mod.normalize(out), BENCH_DIR)
    fs = open_fs(root)
    files = {}
    for task in TASKS:
        rows = task_records(task, root, seed, count, avoid)
        for record, png in rows:
            fs.write_bytes(record.images[0], png)
        files[task.name] = uri_mod.join(root, f"{task.name}.jsonl")
        fs.write_bytes(files[task.name], ("\n".join(dump_line(r) for r, _ in rows) + "\n").encode())
    return files
