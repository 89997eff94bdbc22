"""Conversation JSON: LLaVA-Instruct / ShareGPT4V / LLaVA-1.5's mix (`llava`) and ShareGPT (`sharegpt`).

SRC is one JSON list of {"id", "image" (optional, relative to the image root), "conversations":
[{"from": "human" | "gpt", "value"}, ...]}, as LLaVA-Instruct-150K, ShareGPT4V and
llava_v1_5_mix665k publish it; ShareGPT text-only dumps have the same items without `image`.
The image root (`--images`) defaults to SRC's folder. The text is kept as written: an `<image>`
marker is dropped by the reader (the image always comes first, docs/model.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sphinxx.evals.formats.common import (
    ImportRequest,
    Problem,
    attempt,
    basename,
    field_of,
    ident,
    join,
    parent,
)

from .common import Event, Sample, Streams, dialog, items


def image_ref(root: str, value: Any) -> tuple[str, str]:
    """A record's `image` -> (URI, path of a copy below the source root): relative to `root`, or a URI."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]  # a one-image list (LLaVA-OneVision style)
    if isinstance(value, list):
        raise ValueError(f"{len(value)} images; the model takes at most one image per sample")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field 'image' must be a non-empty string, got {value!r}")
    if "://" in value:
        return value, value.split("://", 1)[1]
    return join(root, value), value.strip("/")


def conversations(streams: Streams, request: ImportRequest) -> Iterator[Event]:
    root = request.images or parent(request.src)
    name = basename(request.src)

    def build(n: int, item: Any) -> Sample:
        rid = ident(item, "id") if isinstance(item, dict) and "id" in item else f"{name}-{n}"
        turns, trimmed = dialog(field_of(item, "conversations"))
        if item.get("image") is None:
            return Sample(rid, turns, trimmed=trimmed)
        uri, path = image_ref(root, item["image"])
        return Sample(rid, turns, image=uri, image_path=path, trimmed=trimmed)

    for n, item in enumerate(items(streams, request.src, "item")):
        yield attempt(f"{name}[{n}]", build, n, item)


def sharegpt(streams: Streams, request: ImportRequest) -> Iterator[Event]:
    """ShareGPT: text-only; an item that names an image is refused (it belongs to `llava`)."""
    for event in conversations(streams, request):
        if isinstance(event, Sample) and event.image is not None:
            yield Problem(
                f"{basename(request.src)} id {event.id}", "names an image; import image dialogs as 'llava'"
            )
        else:
            yield event
