"""`sphinxx eval import`: a benchmark's official files -> a task JSONL, its images, a report.

The importers (`sphinxx.evals.formats`) are pure; this module is their I/O edge. It reads the
source through the storage layer (`s3://`, `file://` or a local path), writes DEST (one
`TaskRecord` per line), writes the images a format carries inline (MMBench) into
`<DEST without .jsonl>.images/`, and writes `<DEST>.report.json`: how many records were written,
filtered and skipped, the count of each reason a record was skipped, and every skipped record's
place and reason (the first 1000 of them).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, BinaryIO

from sphinxx.evals.formats import FormatError, Imported, ImportRequest, run_import
from sphinxx.evals.formats.common import ProblemLog
from sphinxx.evals.task import dump_line
from sphinxx.storage import uri as uri_mod
from sphinxx.storage.objectfs import ObjectFS, open_fs


class StoreFiles:
    """`sphinxx.evals.formats.Files` over the storage layer: one filesystem per scheme."""

    def __init__(self) -> None:
        self._fs: dict[str, ObjectFS] = {}

    def fs(self, uri: str) -> ObjectFS:
        scheme = uri_mod.scheme(uri)
        if scheme not in self._fs:
            self._fs[scheme] = open_fs(uri)
        return self._fs[scheme]

    def read(self, uri: str) -> bytes:
        return self.fs(uri).read_bytes(uri)

    def open(self, uri: str) -> BinaryIO:
        """A stream over the file (`sphinxx data import` reads big JSON files item by item)."""
        return self.fs(uri).open_read(uri)

    def exists(self, uri: str) -> bool:
        return self.fs(uri).exists(uri)

    def names(self, uri: str) -> list[str]:
        return sorted(info.name for info in self.fs(uri).list_dir(uri) if not info.is_dir)


@dataclass(frozen=True)
class ImportSummary:
    dest: str
    report_uri: str
    report: dict[str, Any]


def import_benchmark(
    fmt: str,
    src: str,
    dest: str,
    *,
    images: str | None = None,
    split: str | None = None,
    annotations: str | None = None,
) -> ImportSummary:
    """Import `src` (format `fmt`) into the task file `dest`; FormatError or ValueError when the
    source cannot be read at all (bad records are skipped and reported, never fatal)."""
    dest = uri_mod.normalize(dest)
    request = ImportRequest(
        fmt=fmt,
        src=uri_mod.normalize(src),
        images=uri_mod.normalize(images) if images else None,
        split=split,
        annotations=uri_mod.normalize(annotations) if annotations else None,
        image_out=dest.removesuffix(".jsonl") + ".images",
    )
    files = StoreFiles()
    out = run_import(files, request)
    if not out.records:
        why = "; ".join([_reasons_line(out), *out.notes])
        raise FormatError(f"{request.src}: no {fmt} record could be read ({why})")
    for image_uri, data in out.images.items():
        files.fs(image_uri).write_bytes(image_uri, data)
    text = "".join(dump_line(r) + "\n" for r in out.records)
    files.fs(dest).write_bytes(dest, text.encode())
    report = import_report(request, dest, out)
    report_uri = dest + ".report.json"
    files.fs(report_uri).write_bytes(report_uri, (json.dumps(report, indent=2) + "\n").encode())
    return ImportSummary(dest, report_uri, report)


def _reasons_line(out: Imported) -> str:
    reasons = Counter(p.reason for p in out.problems)
    found = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common(3))
    return found or ("every record filtered out" if out.filtered else "the source holds no record")


def import_report(request: ImportRequest, dest: str, out: Imported) -> dict[str, Any]:
    """The report written beside DEST: counts, the reasons of skipped records, notes."""
    return {
        "format": request.fmt,
        "src": request.src,
        "dest": dest,
        "records": len(out.records),
        "unscored": sum(1 for r in out.records if not r.scored),
        "filtered": out.filtered,
        "images_written": len(out.images),
        "splits": dict(Counter(r.split for r in out.records)),
        **ProblemLog.of(out.problems).summary(),
        "notes": out.notes,
    }
