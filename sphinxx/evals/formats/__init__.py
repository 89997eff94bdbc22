"""The importers of `sphinxx eval import FORMAT SRC DEST`: official annotation layouts -> task records.

FORMATS maps each format name to its importer (docs/evaluation.md, "Importing a benchmark", lists
what SRC is for each and where the images are expected; "lmms-eval" the `lmms-<task>` formats,
which convert the Parquet files of lmms-eval's datasets). `run_import` runs one and applies what
every format shares: the --split filter and one record per id (a repeated id is a problem).
"""

from __future__ import annotations

from collections.abc import Callable

from .choice import mmbench, scienceqa
from .common import Files, FormatError, Imported, ImportRequest, Problem
from .lmms import LMMS_FORMATS
from .refcoco import refcoco
from .vqa import chartqa, docvqa, gqa, textvqa, vqav2
from .yesno import mme, pope

Importer = Callable[[Files, ImportRequest], Imported]

FORMATS: dict[str, Importer] = {
    "vqav2": vqav2,
    "gqa": gqa,
    "textvqa": textvqa,
    "docvqa": docvqa,
    "chartqa": chartqa,
    "refcoco": refcoco,
    "refcoco+": refcoco,
    "refcocog": refcoco,
    "pope": pope,
    "mme": mme,
    "mmbench": mmbench,
    "scienceqa": scienceqa,
    **LMMS_FORMATS,  # lmms-eval's datasets (Parquet files of the hub): lmms-<task>
}

__all__ = ["FORMATS", "Files", "FormatError", "ImportRequest", "Imported", "Problem", "run_import"]


def run_import(files: Files, request: ImportRequest) -> Imported:
    """Import `request.src` as `request.fmt`; FormatError when a source file cannot be read at all."""
    if request.fmt not in FORMATS:
        raise FormatError(f"unknown format {request.fmt!r}; known: {', '.join(FORMATS)}")
    out = FORMATS[request.fmt](files, request)
    if request.split is not None:
        kept = [r for r in out.records if r.split == request.split]
        out.filtered += len(out.records) - len(kept)
        if not kept and out.records:
            found = sorted({r.split for r in out.records})
            out.notes.append(f"no record of split {request.split!r}; the source has {found}")
        out.records = kept
    seen: set[str] = set()
    unique = []
    for record in out.records:
        if record.id in seen:
            out.problems.append(Problem(f"id {record.id}", "repeats an earlier record's id"))
            continue
        seen.add(record.id)
        unique.append(record)
    out.records = unique
    return out
