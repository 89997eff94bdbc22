"""RefCOCO, RefCOCO+, RefCOCOg: refs(unc).p / refs(umd).p (SRC) and instances.json beside it.

The refs file is the list of referring objects the datasets publish: each with ref_id, ann_id,
image_id, split and sentences [{sent, sent_id, ...}]. It is a Python 2 pickle of plain lists,
dicts, strings and numbers, read with an unpickler that refuses every class or function (no
code runs); the common JSON conversion of the same list (a `.json` SRC) is read as JSON.
instances.json (COCO layout) gives each annotation's box [x, y, w, h] and each image's file name
and size. One record per sentence; the target box is written as [x1, y1, x2, y2] in pixels.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

from .. import prompts
from ..task import TaskRecord
from .common import (
    Files,
    FormatError,
    Imported,
    ImportRequest,
    basename,
    field_of,
    ident,
    join,
    parent,
    read_json,
    text,
)


class _PlainData(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refuses {module}.{name}: a refs file holds only plain data")


def read_refs(files: Files, uri: str) -> list[Any]:
    """The refs list of a pickle (plain data only) or of its JSON conversion."""
    if uri.endswith(".json"):
        refs = read_json(files, uri)
    else:
        try:
            raw = files.read(uri)
        except FileNotFoundError:
            raise FormatError(f"{uri}: no such file") from None
        try:
            refs = _PlainData(io.BytesIO(raw), encoding="utf-8", errors="replace").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise FormatError(f"{uri}: not a refs pickle of plain data ({err})") from None
    if not isinstance(refs, list):
        raise FormatError(f"{uri}: a refs file is a list of referring objects")
    return refs


def _index(files: Files, uri: str) -> tuple[dict[int, Any], dict[int, Any]]:
    data = read_json(files, uri)
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations")
    ):
        raise FormatError(f"{uri}: an instances file has 'images' and 'annotations' lists")
    images = {i["id"]: i for i in data["images"] if isinstance(i, dict) and "id" in i}
    boxes = {a["id"]: a for a in data["annotations"] if isinstance(a, dict) and "id" in a}
    return images, boxes


def target(annotation: Any, image: Any) -> tuple[list[float], list[int]]:
    """The referred object's box [x1, y1, x2, y2] in pixels (COCO's [x, y, w, h]) and its image's [w, h]."""
    x, y, w, h = (float(v) for v in field_of(annotation, "bbox"))
    return [x, y, x + w, y + h], [int(field_of(image, "width")), int(field_of(image, "height"))]


def refcoco(files: Files, request: ImportRequest) -> Imported:
    out = Imported()
    refs = read_refs(files, request.src)
    images, annotations = _index(files, request.annotations or join(parent(request.src), "instances.json"))
    root = request.images or join(parent(request.src), "images")

    def build(ref: Any) -> list[TaskRecord]:
        image = images.get(field_of(ref, "image_id"))
        annotation = annotations.get(field_of(ref, "ann_id"))
        if image is None or annotation is None:
            missing = "image_id" if image is None else "ann_id"
            raise ValueError(f"{missing} {ref[missing]!r} is not in instances.json")
        box, size = target(annotation, image)
        sentences = field_of(ref, "sentences")
        if not isinstance(sentences, list) or not sentences:
            raise ValueError("field 'sentences' must be a non-empty list")
        return [
            TaskRecord(
                id=f"{ident(ref, 'ref_id')}-{ident(s, 'sent_id')}",
                task=request.fmt,
                split=text(ref, "split"),
                images=[join(root, text(image, "file_name"))],
                question=text(s, "sent"),
                prompt=prompts.referring(text(s, "sent")),
                metric="box_iou_0.5",
                box=box,
                image_size=size,
                group=ident(ref, "ref_id"),
            )
            for s in sentences
        ]

    for n, ref in enumerate(refs):
        out.add(f"{basename(request.src)}[{n}]", build, ref)
    return out
