"""Generators of the synthetic set: every domain of the SPHINX-X mixture in miniature.

Why these tasks: each has structure a small model can learn and a test can check, and together
they exercise every path of the pipeline (text-only and image samples, multi-turn dialogs,
coordinates in the spec's format, images from 1:6 to 6:1 so that skip tokens occur):

- dialog (language): facts about fictional towns from a fixed table, word games;
- math (language): arithmetic with follow-up turns;
- scenes (vision): shapes on a background; bounding boxes and counting;
- captions (vision-language): a caption of the scene and colour questions;
- charts (vision-language): bar charts and tables with values to read;
- ocr (ocr): rendered text lines (wide banners, tall columns) to transcribe;
- marks (set-of-mark): shapes with numbered marks, questions that refer to the marks.

Each generator takes a `random.Random` and `draw`; with draw=False it skips the drawing (the
tokenizer corpus needs only the text). Coordinates: [x1, y1, x2, y2] or [x, y] with two
decimals, normalised by the image's long side (top-left anchoring, docs/model.md, "Any-resolution images").
Text is drawn with Pillow's built-in font only (`ImageFont.load_default`), so nothing is downloaded.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageDraw, ImageFont

Turns = list[tuple[str, str]]
Sample = tuple[Turns, Any]  # (turns, PIL image or None)

COLORS = {
    "red": (215, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 215),
    "yellow": (230, 200, 30),
    "purple": (140, 60, 170),
    "orange": (240, 140, 30),
    "black": (25, 25, 25),
}
BACKGROUNDS = {"white": (250, 250, 250), "gray": (200, 200, 200), "beige": (235, 225, 200)}
SHAPES = ("circle", "square", "triangle")
# Width:height. 2:1 and beyond (either way) make fully padded cells on a 2x2 grid: skip tokens.
ASPECTS = ((1, 1), (4, 3), (3, 4), (16, 9), (9, 16), (2, 1), (1, 2), (3, 1), (1, 3), (5, 2), (2, 5))
TOWNS = (
    "Varo",
    "Milen",
    "Tasko",
    "Bren",
    "Oruna",
    "Quill",
    "Dessa",
    "Pallo",
    "Zemra",
    "Korin",
    "Lumo",
    "Fenwick",
)
ANIMALS = ("fox", "owl", "otter", "heron", "badger", "lynx", "crane", "beaver")
WORDS = (
    "river stone maple cloud amber lantern harbor meadow copper signal garden window bridge orbit "
    "paper violet thunder candle pepper silver marble canyon falcon ribbon willow ember quartz "
    "harvest compass saddle tunnel beacon glacier velvet pebble"
).split()


def town_facts(town: str) -> tuple[str, str, int]:
    """The fixed (colour, animal, bridges) of a town: the same in every seed, so learnable."""
    i = TOWNS.index(town)
    return list(COLORS)[(3 * i) % len(COLORS)], ANIMALS[(5 * i) % len(ANIMALS)], (7 * i) % 9 + 1


def fmt(*values: float) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def _canvas(rng: random.Random, draw: bool, long_range: tuple[int, int] = (96, 224)) -> tuple[int, int, Any]:
    aw, ah = rng.choice(ASPECTS)
    long_side = rng.randint(*long_range)
    w, h = (
        (long_side, max(8, long_side * ah // aw)) if aw >= ah else (max(8, long_side * aw // ah), long_side)
    )
    bg = rng.choice(list(BACKGROUNDS))
    image = None
    if draw:
        image = Image.new("RGB", (w, h), BACKGROUNDS[bg])
    return w, h, (image, bg)


def _place_shapes(rng: random.Random, w: int, h: int, count: int) -> list[dict[str, Any]]:
    """Non-overlapping boxes of distinct (colour, shape) pairs."""
    placed: list[dict[str, Any]] = []
    size_max = max(10, min(w, h) // 2)
    for _ in range(count * 20):
        if len(placed) == count:
            break
        size = rng.randint(max(8, size_max // 2), size_max)
        x, y = rng.randint(0, w - size), rng.randint(0, h - size)
        box = (x, y, x + size, y + size)
        kind = (rng.choice(list(COLORS)), rng.choice(SHAPES))
        if any(_intersects(box, p["box"]) or kind == (p["color"], p["shape"]) for p in placed):
            continue
        placed.append({"color": kind[0], "shape": kind[1], "box": box})
    return placed


def _intersects(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _draw_shape(image: Image.Image, shape: dict[str, Any]) -> None:
    d = ImageDraw.Draw(image)
    x1, y1, x2, y2 = shape["box"]
    fill = COLORS[shape["color"]]
    if shape["shape"] == "circle":
        d.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
    elif shape["shape"] == "square":
        d.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
    else:
        d.polygon([((x1 + x2) // 2, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)], fill=fill)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


# ---------------------------------------------------------------------------- language


def dialog(rng: random.Random, draw: bool) -> Sample:
    turns: Turns = []
    for _ in range(rng.randint(1, 3)):
        town = rng.choice(TOWNS)
        color, animal, bridges = town_facts(town)
        word, other = rng.choice(WORDS), rng.choice(WORDS)
        turns.append(
            rng.choice(
                [
                    (f"What color is the flag of {town}?", f"The flag of {town} is {color}."),
                    (f"Which animal lives in {town}?", f"The {animal} lives in {town}."),
                    (f"How many bridges does {town} have?", f"{town} has {bridges} bridges."),
                    (f"Spell the word {word} backwards.", " ".join(reversed(word))),
                    (f"Repeat after me: {word} {other}.", f"{word} {other}"),
                ]
            )
        )
    return turns, None


def math(rng: random.Random, draw: bool) -> Sample:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    op = rng.choice("+-")
    value = a + b if op == "+" else a - b
    turns: Turns = [(f"What is {a} {op} {b}?", f"{a} {op} {b} = {value}.")]
    for _ in range(rng.randint(0, 2)):
        k = rng.randint(2, 9)
        if rng.random() < 0.5:
            turns.append((f"Now multiply that by {k}.", f"{value} x {k} = {value * k}."))
            value *= k
        else:
            parity = "even" if value % 2 == 0 else "odd"
            turns.append(("Is that number even or odd?", f"{value} is {parity}."))
    return turns, None


# ---------------------------------------------------------------------------- vision


def scenes(rng: random.Random, draw: bool) -> Sample:
    w, h, (image, _bg) = _canvas(rng, draw)
    shapes = _place_shapes(rng, w, h, rng.randint(1, 4))
    long_side = max(w, h)
    turns: Turns = []
    for shape in rng.sample(shapes, k=min(len(shapes), 2)):
        box = [v / long_side for v in shape["box"]]
        turns.append((f"Give the bounding box of the {shape['color']} {shape['shape']}.", fmt(*box)))
    turns.append(("How many shapes are in the image?", f"There {_count(len(shapes))}."))
    rng.shuffle(turns)
    if draw:
        for shape in shapes:
            _draw_shape(image, shape)
    turns[0] = ("<image>\n" + turns[0][0], turns[0][1])
    return turns, image


def _count(n: int) -> str:
    return "is 1 shape" if n == 1 else f"are {n} shapes"


def captions(rng: random.Random, draw: bool) -> Sample:
    w, h, (image, bg) = _canvas(rng, draw)
    shapes = _place_shapes(rng, w, h, rng.randint(1, 3))
    ordered = sorted(shapes, key=lambda s: s["box"][0])
    names = [f"a {s['color']} {s['shape']}" for s in ordered]
    scene = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    turns: Turns = [("Describe the image briefly.", f"From left to right: {scene}, on a {bg} background.")]
    unique = [s for s in shapes if sum(t["shape"] == s["shape"] for t in shapes) == 1]
    if unique:
        shape = rng.choice(unique)
        turns.append((f"What color is the {shape['shape']}?", f"The {shape['shape']} is {shape['color']}."))
    if draw:
        for shape in shapes:
            _draw_shape(image, shape)
    turns[0] = ("<image>\n" + turns[0][0], turns[0][1])
    return turns, image


def charts(rng: random.Random, draw: bool) -> Sample:
    labels = [chr(ord("A") + i) for i in range(rng.randint(3, 6))]
    values = {label: rng.randint(1, 60) for label in labels}
    asked = rng.sample(labels, k=min(2, len(labels)))
    turns: Turns = [(f"What is the value of {x}?", f"{x} is {values[x]}.") for x in asked]
    top = max(labels, key=lambda x: (values[x], x))
    turns.append(("Which one has the largest value?", f"{top}, with {values[top]}."))
    is_table = rng.random() < 0.4
    image = _draw_table(labels, values) if draw and is_table else None
    if draw and not is_table:
        image = _draw_bars(rng, labels, values)
    turns[0] = ("<image>\n" + turns[0][0], turns[0][1])
    return turns, image


def _draw_bars(rng: random.Random, labels: list[str], values: dict[str, int]) -> Image.Image:
    bar_w = 28
    w, h = bar_w * len(labels) + 16, 96 if rng.random() < 0.5 else 200
    image = Image.new("RGB", (w, h), BACKGROUNDS["white"])
    d = ImageDraw.Draw(image)
    font = _font(11)
    scale = (h - 36) / 60
    for i, label in enumerate(labels):
        x = 8 + i * bar_w
        top = h - 16 - int(values[label] * scale)
        d.rectangle((x + 3, top, x + bar_w - 3, h - 16), fill=COLORS["blue"])
        d.text((x + 6, top - 13), str(values[label]), fill=COLORS["black"], font=font)
        d.text((x + 9, h - 14), label, fill=COLORS["black"], font=font)
    return image


def _draw_table(labels: list[str], values: dict[str, int]) -> Image.Image:
    row_h = 18
    w, h = 90, row_h * len(labels) + 4
    image = Image.new("RGB", (w, h), BACKGROUNDS["white"])
    d = ImageDraw.Draw(image)
    font = _font(13)
    for i, label in enumerate(labels):
        y = 2 + i * row_h
        d.line((0, y, w, y), fill=COLORS["black"])
        d.text((6, y + 2), label, fill=COLORS["black"], font=font)
        d.text((46, y + 2), str(values[label]), fill=COLORS["black"], font=font)
    d.line((40, 0, 40, h), fill=COLORS["black"])
    return image


def ocr(rng: random.Random, draw: bool) -> Sample:
    tall = rng.random() < 0.4
    # A tall column of short lines or a wide banner of one or two long lines.
    lines = (
        [rng.choice(WORDS) for _ in range(rng.randint(4, 8))]
        if tall
        else [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 5))) for _ in range(rng.randint(1, 2))]
    )
    turns: Turns = [("What text is written in the image?", " / ".join(lines))]
    if len(lines) > 1:
        k = rng.randrange(len(lines))
        turns.append((f"Read line {k + 1}.", lines[k]))
    image = None
    if draw:
        font = _font(16)
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        width = max(int(probe.textlength(line, font=font)) for line in lines) + 16
        image = Image.new("RGB", (width, 20 * len(lines) + 12), BACKGROUNDS[rng.choice(list(BACKGROUNDS))])
        d = ImageDraw.Draw(image)
        for i, line in enumerate(lines):
            d.text((8, 6 + 20 * i), line, fill=COLORS["black"], font=font)
    turns[0] = ("<image>\n" + turns[0][0], turns[0][1])
    return turns, image


def marks(rng: random.Random, draw: bool) -> Sample:
    w, h, (image, _bg) = _canvas(rng, draw, (128, 256))
    shapes = _place_shapes(rng, w, h, rng.randint(2, 5))
    long_side = max(w, h)
    turns: Turns = []
    for number in rng.sample(range(1, len(shapes) + 1), k=min(3, len(shapes))):
        shape = shapes[number - 1]
        x1, y1, x2, y2 = shape["box"]
        mark = f"<Mark {number}>"
        turns.append(
            rng.choice(
                [
                    (f"What shape is {mark}?", f"{mark} is a {shape['shape']}."),
                    (f"What color is {mark}?", f"{mark} is {shape['color']}."),
                    (
                        f"Where is {mark}?",
                        f"{mark} {fmt((x1 + x2) / 2 / long_side, (y1 + y2) / 2 / long_side)}",
                    ),
                ]
            )
        )
    if draw:
        font = _font(10)
        for number, shape in enumerate(shapes, start=1):
            _draw_shape(image, shape)
            x1, y1 = shape["box"][:2]
            ImageDraw.Draw(image).rectangle((x1, y1, x1 + 9, y1 + 11), fill=COLORS["black"])
            ImageDraw.Draw(image).text((x1 + 2, y1), str(number), fill=(255, 255, 255), font=font)
    turns[0] = ("<image>\n" + turns[0][0], turns[0][1])
    return turns, image


# (source name, mixture domain, share of --size, generator)
SOURCES: tuple[tuple[str, str, float, Callable[[random.Random, bool], Sample]], ...] = (
    ("synth-dialog", "language", 0.15, dialog),
    ("synth-math", "language", 0.15, math),
    ("synth-scenes", "vision", 0.15, scenes),
    ("synth-captions", "vision-language", 0.15, captions),
    ("synth-charts", "vision-language", 0.15, charts),
    ("synth-ocr", "ocr", 0.15, ocr),
    ("synth-marks", "set-of-mark", 0.10, marks),
)
