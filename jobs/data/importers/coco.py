"""COCO captions (`coco-captions`) and the RefCOCO family (`refcoco`, `refcoco+`, `refcocog`).

COCO captions: SRC is `annotations/captions_<split>.json` ({"images": [{id, file_name, width,
height}], "annotations": [{id, image_id, caption}]}); images default to `<split>/` beside the
`annotations/` folder. One record per caption, asked with CAPTION_PROMPT. The file is read twice,
streaming: the image table (id -> file name and size, ~200 bytes an image: 23 MB for
COCO train2017) first, then the captions.

RefCOCO / RefCOCO+ / RefCOCOg: SRC is the refs file (`refs(unc).p`, `refs(umd).p` or its JSON
conversion, read by `sphinxx.evals.formats.refcoco.read_refs`: plain data only), the companion
`instances.json` beside it (`--annotations`). Only the refs of `--split` (default `train`: the
val/test refs are the benchmark) are kept, and of instances.json, streamed, only the images and
annotations they name. One record per sentence: the evaluation's referring prompt and the box
in the paper's coordinate text (`[x1, y1, x2, y2]` over the long side, two decimals:
`sphinxx.evals.boxes.format_box`, docs/model.md, "Any-resolution images").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sphinxx.evals import prompts
from sphinxx.evals.boxes import format_box
from sphinxx.evals.formats.common import (
    ImportRequest,
    Problem,
    attempt,
    basename,
    field_of,
    ident,
    join,
    parent,
    stem,
    text,
)
from sphinxx.evals.formats.refcoco import read_refs, target

from .common import Event, Sample, Streams, items

CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."  # LLaVA-1.5's short caption
DEFAULT_REF_SPLIT = "train"


def _image_table(streams: Streams, uri: str, wanted: set[Any] | None = None) -> dict[Any, tuple[str, Any]]:
    """image id -> (file name, [w, h] or None) from a COCO file's `images` (only `wanted` ids if given)."""
    table = {}
    for image in items(streams, uri, "images.item"):
        if isinstance(image, dict) and "id" in image and isinstance(image.get("file_name"), str):
            if wanted is None or image["id"] in wanted:
                size = (image["width"], image["height"]) if "width" in image and "height" in image else None
                table[image["id"]] = (image["file_name"], size)
    return table


def coco_captions(streams: Streams, request: ImportRequest) -> Iterator[Event]:
    split = stem(request.src).removeprefix("captions_")
    root = request.images or join(parent(parent(request.src)), split)
    images = _image_table(streams, request.src)
    name = basename(request.src)

    def build(item: Any) -> Sample:
        image_id = field_of(item, "image_id")
        if image_id not in images:
            raise ValueError(f"image_id {image_id!r} is not in the file's images")
        file_name, size = images[image_id]
        caption = text(item, "caption").strip()
        return Sample(
            f"coco-{ident(item, 'id')}",
            [(CAPTION_PROMPT, caption)],
            image=join(root, file_name),
            image_path=file_name,
            image_size=(int(size[0]), int(size[1])) if size else None,
        )

    for n, item in enumerate(items(streams, request.src, "annotations.item")):
        yield attempt(f"{name}[{n}]", build, item)


def refcoco(streams: Streams, request: ImportRequest) -> Iterator[Event]:
    split = request.split or DEFAULT_REF_SPLIT
    name = basename(request.src)
    refs = list(enumerate(read_refs(streams, request.src)))
    kept = [(n, ref) for n, ref in refs if not isinstance(ref, dict) or ref.get("split") == split]
    instances = request.annotations or join(parent(request.src), "instances.json")
    wanted_images = {ref.get("image_id") for _, ref in kept if isinstance(ref, dict)}
    wanted_boxes = {ref.get("ann_id") for _, ref in kept if isinstance(ref, dict)}
    images = _image_table(streams, instances, wanted_images)
    boxes = {
        a["id"]: a
        for a in items(streams, instances, "annotations.item")
        if isinstance(a, dict) and a.get("id") in wanted_boxes
    }
    root = request.images or join(parent(request.src), "images")

    def build(ref: Any) -> list[Sample]:
        image, annotation = images.get(field_of(ref, "image_id")), boxes.get(field_of(ref, "ann_id"))
        if image is None or annotation is None:
            missing = "image_id" if image is None else "ann_id"
            raise ValueError(f"{missing} {ref[missing]!r} is not in {basename(instances)}")
        file_name, size = image
        box, wh = target(annotation, {"width": size[0], "height": size[1]} if size else {})
        sentences = field_of(ref, "sentences")
        if not isinstance(sentences, list) or not sentences:
            raise ValueError("field 'sentences' must be a non-empty list")
        return [
            Sample(
                f"{request.fmt}-{ident(ref, 'ref_id')}-{ident(s, 'sent_id')}",
                [(prompts.referring(text(s, "sent")), format_box(box, wh))],
                image=join(root, file_name),
                image_path=file_name,
                image_size=(wh[0], wh[1]),
            )
            for s in sentences
        ]

    for n, ref in kept:
        built = attempt(f"{name}[{n}]", build, ref)
        yield from [built] if isinstance(built, Problem) else built
