"""Boxes in answer text (the RefCOCO family): parse, normalise the corner order, IoU.

SPHINX-X writes a box as `[x1, y1, x2, y2]`, each coordinate divided by the image's long side
(the image is anchored top-left on its padded square canvas) with two decimals:
"[0.12, 0.30, 0.58, 0.91]" (docs/evaluation.md, "Boxes"). The first bracketed or parenthesised
group of four numbers in an answer is its box; two corners in another order ([x2, y2, x1, y1],
[x1, y2, x2, y1]) describe the same box and are put in order; an answer without such a group,
with a coordinate outside [0, 1], or with a box of no area has no box and scores 0.
"""

from __future__ import annotations

import re

Box = tuple[float, float, float, float]

_NUMBER = r"\s*(-?\d+(?:\.\d*)?|-?\.\d+)\s*"
_BOX = re.compile(r"[\[(]" + ",".join([_NUMBER] * 4) + r"[\])]")


def parse_box(text: str) -> Box | None:
    """The normalised box an answer gives, corners in order, or None (see the module docstring)."""
    found = _BOX.search(text)
    if found is None:
        return None
    a, b, c, d = (float(v) for v in found.groups())
    if min(a, b, c, d) < 0.0 or max(a, b, c, d) > 1.0:
        return None
    box = (min(a, c), min(b, d), max(a, c), max(b, d))
    return box if box[2] > box[0] and box[3] > box[1] else None


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes [x1, y1, x2, y2] (corners in order)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, width) * max(0.0, height)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_hit(prediction: str, box: list[float], image_size: list[int], threshold: float = 0.5) -> float:
    """1.0 when the answer's box overlaps the target (pixels) with IoU >= `threshold`, else 0.0."""
    found = parse_box(prediction)
    if found is None:
        return 0.0
    side = float(max(image_size))
    pixels = (found[0] * side, found[1] * side, found[2] * side, found[3] * side)
    target = (box[0], box[1], box[2], box[3])
    return 1.0 if iou(pixels, target) >= threshold else 0.0


def format_box(box: list[float], image_size: list[int]) -> str:
    """A pixel box [x1, y1, x2, y2] as SPHINX-X writes it: over the long side, two decimals."""
    side = float(max(image_size))
    return "[" + ", ".join(f"{v / side:.2f}" for v in box) + "]"
