"""`sphinxx data import`: a public data set's published files -> one source of our format (format.py).

The converters (`importers/`) are pure; this module is their I/O edge. It reads SRC through the
storage layer (a local path, `file://` or `s3://`; `StoreFiles`, shared with `sphinxx eval
import`), streams the converter's samples into shards (`SourceWriter`), and writes into DEST:

    shards/*.jsonl, *.idx, manifest.json   the source (the manifest last)
    images/...                             only with --copy-images; otherwise records hold image URIs
    import.progress.json                   after every shard: how far the converter's events were
                                           written, the shards, the problems so far
    import.report.json                     at the end: records, records with an image, skipped (count
                                           per reason, the first 1000 listed with their place), trimmed turns

An interrupted import run again with the same arguments goes on from the last shard written:
the converter's events are a function of the files alone, so it skips the events already in
shards and writes the rest; the output is byte for byte the uninterrupted one. A finished import
run again is a no-op; DEST holding another import (other arguments, or SRC changed since) or
another source is refused. A record that cannot be built, fails the source format's own check,
or whose image cannot be copied is skipped and reported; a source file that cannot be read at
all (absent, not JSON past some point) stops the import with a FormatError naming it, the
progress kept and no manifest written.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sphinxx.evals.formats.common import FormatError, ImportRequest, Problem, ProblemLog
from sphinxx.jobs.eval_import import StoreFiles
from sphinxx.schema.run import DOMAINS
from sphinxx.storage import uri as uri_mod

from .format import (
    MANIFEST,
    BadRecordError,
    Manifest,
    SourceWriter,
    parse_record,
    record_to_json,
    written_shard,
)
from .importers import FORMATS, Sample

PROGRESS = "import.progress.json"
REPORT = "import.report.json"
RECORDS_PER_SHARD = 4096
RECENT_COPIES = 4096


@dataclass(frozen=True)
class ImportOptions:
    fmt: str
    src: str
    dest: str
    images: str | None = None
    annotations: str | None = None
    split: str | None = None
    name: str | None = None  # default: DEST's last segment
    domain: str | None = None  # default: the format's
    copy_images: bool = False
    records_per_shard: int = RECORDS_PER_SHARD


@dataclass
class Progress:
    """What `import.progress.json` holds: the import's identity and how far it has written (a
    constant size: the shards written are counted, and read back when an import goes on)."""

    identity: dict[str, Any]
    events: int = 0  # converter events (samples and problems) whose records are in the shards
    records: int = 0
    trimmed: int = 0
    num_images: int = 0
    shards: int = 0
    problems: dict[str, Any] | None = None  # ProblemLog.summary()
    complete: bool = False

    def to_json(self) -> bytes:
        return (json.dumps(vars(self), indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Progress:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class ImportResult:
    dest: str
    report_uri: str
    report: dict[str, Any]
    resumed_at: int  # converter events skipped because an earlier run had written them (0: fresh)
    finished_before: bool = False  # an earlier run had finished this import: nothing was done


def import_source(options: ImportOptions) -> ImportResult:
    """Import `options.src` as a source at `options.dest` (see the module docstring)."""
    files, dest = StoreFiles(), uri_mod.normalize(options.dest)
    request, identity = _request(options, files)
    progress = _progress(files, dest, identity)
    report_uri = uri_mod.join(dest, REPORT)
    if progress.complete:
        return ImportResult(dest, report_uri, json.loads(files.read(report_uri)), progress.events, True)
    resumed_at, log = progress.events, ProblemLog.from_summary(progress.problems or ProblemLog().summary())
    writer = SourceWriter(
        dest,
        identity["name"],
        identity["domain"],
        options.records_per_shard,
        description=f"imported from {request.src} ({options.fmt})",
        shards=[written_shard(dest, n, files.fs(dest)) for n in range(progress.shards)],
        num_images=progress.num_images,
    )
    events, copier = 0, _Copier(files) if options.copy_images else None
    for events, event in enumerate(FORMATS[options.fmt].convert(files, request), 1):
        if events <= resumed_at:
            continue
        problem = event if isinstance(event, Problem) else _write(writer, event, copier)
        if problem is not None:
            log.add(problem)
            continue
        progress.records += 1
        progress.trimmed += event.trimmed if isinstance(event, Sample) else 0
        if len(writer.shards) != progress.shards:  # this record completed a shard: note how far
            _save(files, dest, progress, writer, log, events)
    if not progress.records:
        reasons = "; ".join(f"{n} x {why}" for why, n in log.reasons.most_common(3)) or "it holds no item"
        raise FormatError(f"{request.src}: no {options.fmt} record could be read ({reasons})")
    report = _report(options, request, writer.close(), progress, log)
    files.fs(report_uri).write_bytes(report_uri, (json.dumps(report, indent=2) + "\n").encode())
    progress.complete = True
    _save(files, dest, progress, writer, log, max(events, resumed_at))
    return ImportResult(dest, report_uri, report, resumed_at)


def _request(options: ImportOptions, files: StoreFiles) -> tuple[ImportRequest, dict[str, Any]]:
    if options.fmt not in FORMATS:
        raise FormatError(f"unknown format {options.fmt!r}; known: {', '.join(FORMATS)}")
    domain = options.domain or FORMATS[options.fmt].domain
    if domain not in DOMAINS:
        raise ValueError(f"--domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    request = ImportRequest(
        fmt=options.fmt,
        src=uri_mod.normalize(options.src),
        images=uri_mod.normalize(options.images) if options.images else None,
        split=options.split,
        annotations=uri_mod.normalize(options.annotations) if options.annotations else None,
    )
    inputs = {}
    for uri in filter(None, (request.src, request.annotations)):
        info = files.fs(uri).info(uri)
        if info is None:
            raise FormatError(f"{uri}: no such file")
        inputs[uri] = {"size": info.size, "etag": info.etag}
    dest = uri_mod.normalize(options.dest)
    identity = {
        "format": options.fmt,
        "src": request.src,
        "images": request.images,
        "annotations": request.annotations,
        "split": request.split,
        "name": options.name or dest.rsplit("/", 1)[-1],
        "domain": domain,
        "copy_images": options.copy_images,
        "records_per_shard": options.records_per_shard,
        "inputs": inputs,
    }
    return request, identity


def _progress(files: StoreFiles, dest: str, identity: dict[str, Any]) -> Progress:
    """The progress of an earlier run of this import, or a fresh one; ValueError when DEST holds
    something else."""
    uri = uri_mod.join(dest, PROGRESS)
    if not files.exists(uri):
        if files.exists(uri_mod.join(dest, MANIFEST)):
            raise ValueError(f"{dest} already holds a source that no import wrote: choose another DEST")
        return Progress(identity)
    progress = Progress.from_json(files.read(uri))
    if progress.identity != identity:
        changed = sorted(k for k in identity if identity[k] != progress.identity.get(k))
        raise ValueError(
            f"{dest} holds an import of other arguments or inputs ({', '.join(changed)} differ): "
            f"run it with the same ones, or import into another DEST (or delete this one)"
        )
    return progress


def _write(writer: SourceWriter, sample: Sample, copy: _Copier | None) -> Problem | None:
    """Add one sample's record (and its image copy) to the source; the Problem when it cannot be."""
    images: list[str] = []
    if sample.image is not None:
        images = [sample.image]
        if copy is not None:
            images = [uri_mod.join("images", sample.image_path or sample.image.split("://", 1)[-1])]
            try:
                copy(sample.image, uri_mod.join(writer.root, images[0]))
            except FileNotFoundError:
                return Problem(f"id {sample.id}: {sample.image}", "image not found")
    sizes = [sample.image_size] if sample.image_size and images else []
    line = record_to_json(sample.turns, images, sample.id, sizes)
    try:
        parse_record(line.encode(), f"id {sample.id}")
    except BadRecordError as err:
        return Problem(f"id {sample.id}", err.detail)
    writer.add(line, image_refs=len(images))
    return None


class _Copier:
    """Copies images into the source; an image copied among the last RECENT_COPIES is not copied
    again (RefCOCO's sentences of one object, VQA's questions of one image come together)."""

    def __init__(self, files: StoreFiles):
        self.files, self.recent = files, OrderedDict[str, None]()

    def __call__(self, src: str, dst: str) -> None:
        if dst in self.recent:
            self.recent.move_to_end(dst)
            return
        source = self.files.fs(src)
        if uri_mod.scheme(src) == uri_mod.scheme(dst):
            source.copy_file(src, dst)  # server-side on S3
        else:
            self.files.fs(dst).write_bytes(dst, source.read_bytes(src))
        self.recent[dst] = None
        if len(self.recent) > RECENT_COPIES:
            self.recent.popitem(last=False)


def _save(
    files: StoreFiles, dest: str, progress: Progress, writer: SourceWriter, log: ProblemLog, events: int
) -> None:
    progress.events, progress.shards, progress.num_images = events, len(writer.shards), writer.num_images
    progress.problems = log.summary()
    uri = uri_mod.join(dest, PROGRESS)
    files.fs(uri).replace_bytes(uri, progress.to_json())


def _report(
    options: ImportOptions, request: ImportRequest, manifest: Manifest, progress: Progress, log: ProblemLog
) -> dict[str, Any]:
    return {
        "format": options.fmt,
        "src": request.src,
        "dest": uri_mod.normalize(options.dest),
        "name": manifest.name,
        "domain": manifest.domain,
        "records": manifest.num_records,
        "with_images": manifest.num_images,
        "images_copied": options.copy_images,
        "shards": len(manifest.shards),
        "trimmed_turns": progress.trimmed,
        **log.summary(),
    }
