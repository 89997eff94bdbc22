"""The converters of `sphinxx data import FORMAT SRC DEST`: published layouts -> training samples.

FORMATS maps each format name to its converter and the mixture domain its records get by
default (docs/training.md, "Importing public data sets", lists SRC, the companion file and the
image paths of each). Converters are pure (`common.py`: they read through `Streams` and yield
samples and problems in the files' order); `jobs/data/importer.py` is their I/O edge and writes
the source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sphinxx.evals.formats.common import FormatError, ImportRequest, Problem

from .coco import coco_captions, refcoco
from .common import Event, Sample, Streams
from .dialogs import conversations, sharegpt
from .vqa import docvqa, textvqa, vqav2


@dataclass(frozen=True)
class Format:
    convert: Callable[[Streams, ImportRequest], Iterator[Event]]
    domain: str  # the default mixture domain (sphinxx.schema.run.DOMAINS)


FORMATS: dict[str, Format] = {
    "llava": Format(conversations, "vision-language"),
    "sharegpt": Format(sharegpt, "language"),
    "coco-captions": Format(coco_captions, "vision-language"),
    "vqav2": Format(vqav2, "vision-language"),
    "textvqa": Format(textvqa, "vision-language"),
    "docvqa": Format(docvqa, "vision-language"),
    "refcoco": Format(refcoco, "vision"),
    "refcoco+": Format(refcoco, "vision"),
    "refcocog": Format(refcoco, "vision"),
}

__all__ = ["FORMATS", "Event", "Format", "FormatError", "ImportRequest", "Problem", "Sample", "Streams"]
