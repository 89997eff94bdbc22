"""Node-local staging of read-only inputs (weights, tokenizers): one download per file per node.

Every training worker needs the base weights and the tokenizer as local files. On a node with 8
workers, 8 independent downloads of Mixtral's 93 GB would be 750 GB of S3 traffic and local
disk; so the workers of a node share one cache folder (a hostPath or node-local volume the pods
mount, `SPHINXX_STAGE_DIR`), and each file is downloaded by the first worker that needs it, under
a file lock, while the others wait for it (docs/storage.md, "Staging inputs on a node").

Layout under the cache root:

    <root>/<name>-<hash16>/<rel>                 the staged files (hash16: sha256 of the URI)
    <root>/<name>-<hash16>/.staged/<rel>.json    what was checked: uri, size, etag, the local size
                                                 and mtime_ns (written after the file is in place)
    <root>/<name>-<hash16>/.staged/<rel>.lock    flock(2) taken while a file is checked or fetched

A file is fetched to a temporary name, checked against the object's size and its S3 ETag (the
MD5 of a single-part object; for a multipart object, the MD5 of its parts' MD5s, with the part
size from HeadObject PartNumber=1), then renamed into place, and its record written last: a
killed download leaves no file under the final name, and a file without a record is fetched
again. A staged file is reused when its record matches the object (size and ETag unchanged at
the source) and the local file (size and mtime unchanged since it was checked); a file changed
or truncated on the node is fetched again. `verify="full"` also re-hashes a reused file.

Local paths and `file://` URIs are not copied: they are already on the node.

    report = stage("s3://models/Mixtral-8x7B-v0.1", select=checkpoint_files)
    report.local_path   # /var/cache/sphinxx/Mixtral-8x7B-v0.1-1a2b.../ ready to open
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, TextIO

from . import uri as uri_mod
from .errors import CheckpointCorruptError, StorageAccessError
from .listing import ObjectInfo
from .objectfs import ObjectFS, open_fs
from .options import StorageOptions
from .transfer import TransferItem, TransferProgress, download

STAGE_DIR_ENV = "SPHINXX_STAGE_DIR"
RECORDS = ".staged"
PROGRESS_EVERY_S = 10.0

Select = Callable[[Sequence[str]], Sequence[str]]


@dataclass(frozen=True)
class StageReport:
    """What staging one URI did: where the files are, and what it cost."""

    uri: str
    local_path: str  # the staged folder, or the file for a single-object URI
    files: int
    bytes_total: int
    bytes_downloaded: int  # by this process; the rest was reused or fetched by a peer on the node
    seconds: float


def default_root() -> str:
    """`SPHINXX_STAGE_DIR`, else a folder in the user's cache (a laptop run)."""
    return os.environ.get(STAGE_DIR_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sphinxx", "stage"
    )


def cache_folder(root: str, uri: str) -> str:
    """`<root>/<last path part>-<sha256(uri)[:16]>`: stable, readable and collision-free."""
    norm = uri_mod.normalize(uri).rstrip("/")
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in norm.rsplit("/", 1)[-1])[:64]
    return os.path.join(root, f"{name or 'root'}-{hashlib.sha256(norm.encode()).hexdigest()[:16]}")


def stage(
    uri: str,
    *,
    root: str | None = None,
    select: Select | None = None,
    options: StorageOptions | None = None,
    verify: Literal["fast", "full"] = "fast",
    log: TextIO | None = None,
    what: str = "input",
) -> StageReport:
    """Make the object or folder at `uri` available as local files; see the module docstring.

    `select` picks which files of a folder to fetch from the names it holds (e.g. only the
    tokenizer files of a model folder); it must keep at least one. `what` names the input in
    messages (`model.llm_weights`). Raises StorageAccessError when nothing is at `uri`.
    """
    started = time.monotonic()
    norm = uri_mod.normalize(uri)
    if norm.startswith("file://"):
        path = norm[len("file://") :]
        if not os.path.exists(path):
            raise StorageAccessError(f"{what}: {uri} does not exist", uri)
        return StageReport(uri, path, 0, 0, 0, 0.0)
    fs = open_fs(norm, options)
    base, listing, single = _listing(fs, norm, uri, what)
    names = sorted(listing)
    chosen = list(select(names)) if select is not None else names
    if not chosen:
        raise StorageAccessError(f"{what}: {uri} holds none of the files needed ({len(names)} files)", uri)
    folder = cache_folder(root or default_root(), norm)
    objects = [listing[n] for n in chosen]
    fetched = _Fetcher(fs, base, folder, verify, log or sys.stderr, what).run(objects)
    local = os.path.join(folder, chosen[0]) if single else folder
    total = sum(o.size for o in objects)
    return StageReport(uri, local, len(objects), total, fetched, round(time.monotonic() - started, 3))


def planned_bytes(
    uri: str, *, select: Select | None = None, options: StorageOptions | None = None, what: str = "input"
) -> int:
    """Bytes `stage` would fetch for `uri` into an empty cache (0 for a local path): a listing only."""
    norm = uri_mod.normalize(uri)
    if norm.startswith("file://"):
        return 0
    _, listing, _ = _listing(open_fs(norm, options), norm, uri, what)
    chosen = list(select(sorted(listing))) if select is not None else list(listing)
    return sum(listing[n].size for n in chosen)


def _listing(fs: ObjectFS, norm: str, uri: str, what: str) -> tuple[str, dict[str, ObjectInfo], bool]:
    """(folder the names are relative to, {name: info}, whether `uri` is one object)."""
    listing = fs.list_files(norm)
    if listing:
        return norm, listing, False
    info = fs.info(norm)
    if info is None:
        raise StorageAccessError(f"{what}: nothing at {uri} (no object and no folder)", uri)
    return uri_mod.normalize(norm.rstrip("/").rsplit("/", 1)[0]), {info.name: info}, True


class _Fetcher:
    """Fetch the files of one folder into the cache, each under its lock (module docstring)."""

    def __init__(self, fs: ObjectFS, base: str, folder: str, verify: str, log: TextIO, what: str):
        self.fs, self.base, self.folder, self.verify, self.log, self.what = (
            fs,
            base,
            folder,
            verify,
            log,
            what,
        )
        self.progress = _Progress(log, what, base)

    def run(self, objects: list[ObjectInfo]) -> int:
        """Returns the bytes this process downloaded."""
        os.makedirs(os.path.join(self.folder, RECORDS), exist_ok=True)
        mine: list[tuple[ObjectInfo, int]] = []
        theirs: list[ObjectInfo] = []
        downloaded = 0
        try:
            for obj in sorted(objects, key=lambda o: -o.size):
                fd = self._lock(obj, blocking=False)
                if fd is None:
                    theirs.append(obj)  # a peer on this node is fetching it: wait below
                elif self._valid(obj):
                    _unlock(fd)
                else:
                    mine.append((obj, fd))
            self.progress.start(sum(o.size for o, _ in mine))
            downloaded += self._fetch([o for o, _ in mine])
        finally:
            for _, fd in mine:
                _unlock(fd)
        for obj in theirs:
            fd = self._lock(obj, blocking=True)
            assert fd is not None  # a blocking lock is always taken
            try:
                if not self._valid(obj):  # the peer died or its copy failed its check
                    self.progress.start(obj.size)
                    downloaded += self._fetch([obj])
            finally:
                _unlock(fd)
        return downloaded

    def _target(self, obj: ObjectInfo) -> str:
        return os.path.join(self.folder, obj.name)

    def _record_path(self, obj: ObjectInfo, suffix: str) -> str:
        return os.path.join(self.folder, RECORDS, obj.name + suffix)

    def _lock(self, obj: ObjectInfo, blocking: bool) -> int | None:
        path = self._record_path(obj, ".lock")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _valid(self, obj: ObjectInfo) -> bool:
        """The staged copy is the object's, unchanged since it was checked (module docstring)."""
        target = self._target(obj)
        try:
            with open(self._record_path(obj, ".json")) as f:
                record = json.load(f)
            st = os.stat(target)
        except (OSError, ValueError):
            return False
        same = (
            record.get("size") == obj.size
            and record.get("etag") == obj.etag
            and record.get("local_size") == st.st_size == obj.size
            and record.get("local_mtime_ns") == st.st_mtime_ns
        )
        if same and self.verify == "full" and obj.etag:
            same = _etag_matches(target, obj.etag, self.fs.part_size(self._uri(obj)))
        return same

    def _uri(self, obj: ObjectInfo) -> str:
        return uri_mod.join(self.base, obj.name)

    def _fetch(self, objects: list[ObjectInfo]) -> int:
        if not objects:
            return 0
        for obj in objects:  # what a killed fetch left: its temporary file and the old record
            target = self._target(obj)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._record_path(obj, ".json"))
            for stale in _partials(target):
                os.unlink(stale)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
        # A multipart ETag needs the part size (one HEAD with PartNumber=1); the listing's ETag
        # also spares s3transfer its HEAD per object, and pins the download to that version.
        parts = {
            o.name: self.fs.part_size(self._uri(o)) if o.etag and "-" in o.etag else None for o in objects
        }
        items = [
            TransferItem(
                self._target(o),
                self._uri(o),
                o.size,
                etag=o.etag,
                stream_etag=_checkable(o.etag, parts[o.name]),
                etag_part_size=parts[o.name],
            )  # fmt: skip
            for o in objects
        ]
        # Sizes checked, temporary names renamed into place, and each ETag computed as the bytes
        # streamed in (a second read of every file measured 1.46x a raw download: bench/stage.py).
        streamed = download(self.fs, items, self.progress.hook)
        for obj, etag in zip(objects, streamed, strict=True):
            self._check(obj, parts[obj.name], etag)
        self.progress.finish()
        return sum(o.size for o in objects)

    def _check(self, obj: ObjectInfo, part: int | None, streamed: str | None) -> None:
        """The downloaded file against the object's ETag: the one computed while it streamed in,
        else (another scheme, a part fetched twice) by reading the file."""
        target = self._target(obj)
        if streamed is not None:
            matches = streamed == obj.etag
        else:
            matches = not obj.etag or _etag_matches(target, obj.etag, part)
        if not matches:
            os.unlink(target)
            raise CheckpointCorruptError(
                f"{self.what}: {self._uri(obj)} downloaded with a checksum that does not match its ETag "
                f"{obj.etag}; the staged copy was removed",
                self._uri(obj),
                [self._uri(obj)],
            )
        st = os.stat(target)
        record = {
            "uri": self._uri(obj),
            "size": obj.size,
            "etag": obj.etag,
            "local_size": st.st_size,
            "local_mtime_ns": st.st_mtime_ns,
            "checked": "etag" if obj.etag and ("-" not in obj.etag or part) else "size",
        }
        tmp = self._record_path(obj, f".json.{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, self._record_path(obj, ".json"))


def _partials(target: str) -> Iterator[str]:
    folder, name = os.path.split(target)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(folder):
            if entry.startswith(name + ".part-"):
                yield os.path.join(folder, entry)


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _checkable(etag: str | None, part_size: int | None) -> bool:
    """Whether an ETag is one a download can be checked against (see `_etag_matches`)."""
    if not etag:
        return False
    return part_size is not None if "-" in etag else len(etag) == 32


def _etag_matches(path: str, etag: str, part_size: int | None) -> bool:
    """S3's ETag of an unencrypted object: MD5 of the bytes, or for a multipart upload the MD5 of
    the parts' MD5 digests followed by `-<parts>`. An ETag that is neither (SSE-KMS objects, other
    stores) cannot be checked: True, and the size check stands alone."""
    if "-" in etag:
        if part_size is None:
            return True
        digests = []
        buffer = bytearray(part_size)  # one buffer for every part (no allocation per read)
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                digests.append(hashlib.md5(memoryview(buffer)[:n], usedforsecurity=False).digest())
        combined = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
        return f"{combined}-{len(digests)}" == etag
    if len(etag) != 32:
        return True
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.md5(usedforsecurity=False)).hexdigest() == etag


class _Progress:
    """Bytes, rate and ETA to the job log, every PROGRESS_EVERY_S and at the end."""

    def __init__(self, log: TextIO, what: str, uri: str):
        self.log, self.what, self.uri = log, what, uri
        self.total = self.done = 0
        self.started = self.last = 0.0

    def start(self, total: int) -> None:
        self.total, self.done = total, 0
        self.started = self.last = time.monotonic()
        if total:
            print(f"[stage] {self.what}: fetching {_gb(total)} from {self.uri}", file=self.log, flush=True)

    def hook(self, p: TransferProgress) -> None:
        self.done = p.bytes_done
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            print(self.line(now), file=self.log, flush=True)

    def line(self, now: float) -> str:
        rate = self.done / max(now - self.started, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / max(self.total, 1)
        return (
            f"[stage] {self.what}: {_gb(self.done)} / {_gb(self.total)} ({pct:.1f}%), "
            f"{rate / 1e6:.0f} MB/s, ETA {_duration(eta)}"
        )

    def finish(self) -> None:
        if self.total:
            seconds = time.monotonic() - self.started
            print(
                f"[stage] {self.what}: {_gb(self.total)} in {seconds:.1f}s "
                f"({self.total / max(seconds, 1e-9) / 1e6:.0f} MB/s)",
                file=self.log,
                flush=True,
            )


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
