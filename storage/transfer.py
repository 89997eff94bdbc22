"""Parallel upload and download of many local files, with progress hooks and bounded memory.

The trainer hands over a checkpoint's files, on local disk or as bytes in memory (an item's
`data`: the same parts and digests, no disk), and the store ships them. Files go
`file_concurrency` at a time (largest first, so one huge shard does not finish last alone),
each as an S3 multipart transfer (s3bulk.py) sharing a pool of file_concurrency x
part_concurrency part workers. Memory is bounded by that many parts (4 x 4 x 8 MiB = 128 MiB
by default): bytes are read from disk in parts, never whole files (an upload from memory holds
its bytes already). An upload's digest is taken from the SHA-256 botocore signs for each part
on plain-HTTP endpoints, else computed in a thread beside the upload; a download hashes the
bytes as they stream in (hashing.py) and checks size and sha256 against the manifest before
renaming its temporary file into place.

Part size is at least 8 MiB (boto3's default) and at least size / 10,000
(S3 allows at most 10,000 parts; `MAX_PARTS` in s3transfer), rounded up to a
MiB. Per-request retries are botocore's (clients.py); a whole file is retried only
for transient errors botocore cannot see (a body cut mid-stream), never for a
permanent one (access denied, missing bucket), which surfaces at once as a
`StorageAccessError` naming the URI.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from fsspec.callbacks import Callback

from .errors import CheckpointCorruptError, StorageAccessError, StorageTimeoutError
from .hashing import ETagDigest, FileDigest, Hasher, sha256_file
from .objectfs import ObjectFS
from .options import MiB
from .threads import DaemonThreadPool

MAX_PARTS = 10_000
_T = TypeVar("_T")


@dataclass(frozen=True)
class TransferProgress:
    direction: Literal["upload", "download"]
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    file: str | None = None  # the URI of the file that just completed; None on byte-level updates


ProgressHook = Callable[[TransferProgress], None]


@dataclass(frozen=True)
class TransferItem:
    local_path: str  # for an upload from memory (`data`), a label naming what the bytes are
    uri: str
    size: int  # bytes; for downloads, the size the manifest promises
    sha256: str | None = None  # for downloads: checked when verify_checksums is on
    etag: str | None = None  # for S3 downloads: the object's ETag from a listing (spares a HEAD)
    # For downloads checked against their S3 ETag (staging): compute it while the bytes stream in,
    # as `ETagDigest(etag_part_size)` (None: a single-part object's MD5); `download` returns it.
    stream_etag: bool = False
    etag_part_size: int | None = None
    part_size: int | None = None  # for downloads: `sha256` is the part tree of parts this size
    # For uploads from memory: the object's bytes (no local file; `size` is their length). A
    # checkpoint streamed from host memory (jobs/checkpoint) needs no container disk.
    data: bytes | None = field(default=None, repr=False, compare=False)


def chunk_size_for(size: int, min_chunk: int = 8 * MiB) -> int:
    """The multipart part size for a file of `size` bytes."""
    need = max(min_chunk, math.ceil(size / MAX_PARTS))
    return math.ceil(need / MiB) * MiB


def _sha256_of(item: TransferItem) -> str:
    """The sha256 of an upload's bytes: its local file's, or its in-memory `data`'s."""
    if item.data is not None:
        return hashlib.sha256(item.data).hexdigest()
    return sha256_file(item.local_path)


def _hash_in_background(item: TransferItem) -> Callable[[], str]:
    """Start hashing `item`'s bytes in a thread (hashlib releases the GIL); the result waits for it."""
    digest: cf.Future[str] = cf.Future()

    def work() -> None:
        try:
            digest.set_result(_sha256_of(item))
        except BaseException as err:  # re-raised in the caller's thread by result()
            digest.set_exception(err)

    threading.Thread(target=work, name="ckpt-sha256", daemon=True).start()
    return digest.result


def upload(
    fs: ObjectFS, items: Sequence[TransferItem], progress: ProgressHook | None = None
) -> list[FileDigest]:
    """Upload every item; return their digests (as the manifest records them) in the order given.

    Where the store `signs_payloads`, the digest comes from the SHA-256 botocore signed for each
    part it sent (fs.put_file): no second read of the file. Elsewhere the file's sha256 is
    computed in a thread beside the upload (hashlib releases the GIL).
    """
    tracker = _Tracker("upload", items, progress)
    signed = fs.signs_payloads

    def one(item: TransferItem) -> FileDigest:
        beside = None if signed else _hash_in_background(item)
        chunk = chunk_size_for(item.size, fs.options.min_chunk_bytes)

        def put(cb: Callback | None, _: int) -> FileDigest | None:
            if item.data is not None:
                return fs.put_bytes(item.data, item.uri, chunk_size=chunk, callback=cb, digest=signed)
            return fs.put_file(item.local_path, item.uri, chunk_size=chunk, callback=cb, digest=signed)

        sent = _with_file_retries(fs, item, "upload", tracker, put)
        if beside is not None:
            return FileDigest(beside())
        return sent or FileDigest(_sha256_of(item))  # a part's signed hash was missing

    return _run_all(fs, items, one, tracker)


def download(
    fs: ObjectFS, items: Sequence[TransferItem], progress: ProgressHook | None = None
) -> list[str | None]:
    """Download every item into a temporary name, check size (and sha256), then move it into place.

    On S3 the sha256 is computed while the bytes stream in (hashing.py); the file is read
    again only where the stream could not vouch for it (other schemes, a part fetched twice).
    Returns, per item, the ETag computed while streaming for `stream_etag` items (None where the
    stream could not vouch for it, or for other items): the caller compares it with the object's.
    """
    tracker = _Tracker("download", items, progress)

    def one(item: TransferItem) -> str | None:
        chunk = chunk_size_for(item.size, fs.options.min_chunk_bytes)
        tmp = f"{item.local_path}.part-{uuid.uuid4().hex[:8]}"
        check = _wants_sha256(fs, item)
        digest: Callable[[], Hasher] | None = None
        if check:
            digest = _expected(item).new_hasher
        elif item.stream_etag:
            digest = functools.partial(ETagDigest, item.etag_part_size)
        try:
            streamed = _with_file_retries(
                fs,
                item,
                "download",
                tracker,
                # The listed ETag on the first attempt only: if the object changed since the
                # listing, a retry asks S3 again (and the sha256 then judges what it got).
                lambda cb, attempt: fs.get_file(
                    item.uri,
                    tmp,
                    chunk_size=chunk,
                    callback=cb,
                    size=item.size,
                    etag=item.etag if attempt == 1 else None,
                    digest=digest,
                ),
            )
            _check_download(fs, item, tmp, streamed if check else None)
            os.replace(tmp, item.local_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return streamed if item.stream_etag and not check else None

    return _run_all(fs, items, one, tracker)


def _wants_sha256(fs: ObjectFS, item: TransferItem) -> bool:
    return fs.options.verify_checksums and bool(item.sha256)


def _expected(item: TransferItem) -> FileDigest:
    return FileDigest(item.sha256 or "", item.part_size)


def _check_download(fs: ObjectFS, item: TransferItem, tmp: str, streamed: str | None = None) -> None:
    """Size, then sha256 against the manifest: `streamed` (the digest computed during the
    download, of exactly the bytes in `tmp`) when there is one, else by reading `tmp`."""
    size = os.path.getsize(tmp)
    if size != item.size:
        raise CheckpointCorruptError(
            f"{item.uri}: size {size} != {item.size} in the manifest", item.uri, [item.uri]
        )
    expected = _expected(item)
    if _wants_sha256(fs, item) and (streamed or expected.of_file(tmp)) != expected.sha256:
        raise CheckpointCorruptError(f"{item.uri}: sha256 does not match the manifest", item.uri, [item.uri])


class _Tracker:
    """Thread-safe byte and file counters that call the user's hook."""

    def __init__(
        self,
        direction: Literal["upload", "download"],
        items: Sequence[TransferItem],
        hook: ProgressHook | None,
    ):
        self.direction, self.hook = direction, hook
        self.bytes_total = sum(i.size for i in items)
        self.files_total = len(items)
        self.bytes_done = self.files_done = 0
        self.lock = threading.Lock()
        self.abandoned = threading.Event()  # the transfer missed its deadline: start nothing more

    def add(self, nbytes: int, file: str | None = None) -> None:
        with self.lock:
            self.bytes_done += nbytes
            self.files_done += file is not None
            event = TransferProgress(
                self.direction, self.bytes_done, self.bytes_total, self.files_done, self.files_total, file
            )
        if self.hook is not None and (nbytes or file):
            self.hook(event)


class _FileCallback(Callback):
    """fsspec callback that forwards byte deltas of one file to the tracker."""

    def __init__(self, tracker: _Tracker):
        super().__init__()
        self.tracker, self.reported = tracker, 0

    def call(self, *args: Any, **kwargs: Any) -> None:
        delta, self.reported = self.value - self.reported, self.value
        if delta:
            self.tracker.add(delta)  # negative when a retried part is sent again


_PERMANENT = (PermissionError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)


def _with_file_retries(
    fs: ObjectFS,
    item: TransferItem,
    verb: str,
    tracker: _Tracker,
    run: Callable[[Callback | None, int], _T],
) -> _T:
    """`run(callback, attempt)` (one whole-file attempt, counted from 1) until it succeeds; its result."""
    attempts = fs.options.file_attempts
    for attempt in range(1, attempts + 1):
        if (
            tracker.abandoned.is_set()
        ):  # a retry after the caller gave up would only compete with the next save
            raise StorageTimeoutError(f"{verb} of {item.uri} abandoned after the deadline", item.uri)
        # Byte-level updates only for a hook: s3transfer reports every 8 KiB it sends (25,600
        # calls per 200 MiB), which cost 0.05 s of a 1.6 s commit in bench/storage.py.
        callback = _FileCallback(tracker) if tracker.hook is not None else None
        try:
            result = run(callback, attempt)
        except (OSError, TimeoutError) as err:
            reported = callback.reported if callback is not None else 0
            tracker.add(-reported)  # this file's bytes will be counted again
            if isinstance(err, _PERMANENT) or attempt == attempts:
                how = (
                    "permanent error"
                    if isinstance(err, _PERMANENT)
                    else f"failed after {attempt} file attempts"
                )
                raise StorageAccessError(
                    f"{verb} {item.local_path} {'->' if verb == 'upload' else '<-'} {item.uri}: {how}: "
                    f"{type(err).__name__}: {err}",
                    item.uri,
                ) from err
            time.sleep(min(2.0**attempt * 0.1, 5.0))
        else:
            tracker.add(item.size - (callback.reported if callback is not None else 0), file=item.uri)
            return result
    raise AssertionError("unreachable: the last attempt returns or raises")


def _run_all(
    fs: ObjectFS, items: Sequence[TransferItem], one: Callable[[TransferItem], _T], tracker: _Tracker
) -> list[_T]:
    """`one(item)` for every item on the pool (largest first); the results in the order of `items`."""
    if not items:
        return []
    order = sorted(range(len(items)), key=lambda i: -items[i].size)
    deadline = fs.options.deadline_s
    start = time.monotonic()
    pool = DaemonThreadPool(min(fs.options.file_concurrency, len(items)), thread_name_prefix="ckpt-xfer")
    futures = {pool.submit(one, items[i]): i for i in order}
    try:
        pending = set(futures)
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - (time.monotonic() - start))
            done, pending = cf.wait(pending, timeout=timeout, return_when=cf.FIRST_EXCEPTION)
            if not done and pending:
                uri = items[futures[next(iter(pending))]].uri
                raise StorageTimeoutError(
                    f"{tracker.direction} did not finish within {deadline:.0f}s (still busy: {uri})", uri
                )
            for future in done:
                future.result()  # re-raise the first failure
    except StorageTimeoutError:
        tracker.abandoned.set()
        pool.shutdown(wait=False, cancel_futures=True)  # hung threads cannot be joined; the save fails now
        fs.cancel_transfers({items[futures[f]].uri for f in futures if not f.done()})  # send no more parts
        raise
    except BaseException:
        pool.shutdown(
            wait=True, cancel_futures=True
        )  # let running files end so nothing lands after we return
        raise
    pool.shutdown(wait=True)
    by_index = {index: future for future, index in futures.items()}
    return [by_index[index].result() for index in range(len(items))]
