"""Bulk S3 transfers (whole files) through boto3's s3transfer; everything else goes through s3fs.

Why two client stacks: s3fs (aiobotocore) runs every request of a filesystem on
one event-loop thread, so the per-part CRC32 (and, on plain-HTTP endpoints, the
SigV4 payload SHA-256) of a multipart upload is computed serially, and
measured 20-30% slower than boto3 on the same moto server (bench/storage.py).
s3transfer computes them in worker threads (hashlib and zlib release the GIL),
retries interrupted download streams (`num_download_attempts`), keeps at most
`max_in_memory_*_chunks` parts in memory, and never exceeds 10,000 parts.
Both clients are built by clients.py from the same StorageOptions (endpoint,
region, profile, retries, timeouts).

One TransferManager per part size (almost always just 8 MiB) serves every
file of a transfer: `file_concurrency x part_concurrency` threads, and as many
parts in memory, bound the whole transfer.

An upload can report the SHA-256 of every part it sent (`upload(..., payload_hashes=True)`): on a
plain-HTTP endpoint botocore signs each request's payload, so it computes the SHA-256 of every
part body (sent as `X-Amz-Content-SHA256`, which S3 checks against the bytes it receives).
`_PayloadHashes` keeps those values, read from the signed request just before it is sent, so the
commit records a digest of exactly the bytes S3 accepted without hashing the file a second time
(transfer.py, hashing.PartTreeDigest). Over HTTPS botocore sends `UNSIGNED-PAYLOAD` (TLS and a
CRC32 checksum protect the body instead): nothing is captured and the caller hashes the file.

A download goes into a local path or a seekable file object (hashing.HashingFile,
which hashes the bytes as they land). Given an object's size and ETag, s3transfer
sends no HeadObject: the size plans the ranged parts, the ETag is their If-Match.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, cast

from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.futures import TransferFuture
from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber

from .hashing import HashingFile
from .threads import DaemonThreadPool

# s3transfer and botocore at the head: objectfs.py imports this module only for the first
# whole-file transfer over S3, so `import sphinxx.storage` stays light. mypy_boto3_s3 is a
# stub-only package of the dev extra, never imported at run time.
if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


IO_CHUNK = 1 << 19  # bytes per read from a download stream (see S3Bulk._manager)

_PERMISSION_CODES = {
    "AccessDenied",
    "403",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
}
_MISSING_CODES = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}


class S3Bulk:
    def __init__(self, client: S3Client, threads: int):
        self.client, self.threads = client, threads
        self._managers: dict[int, TransferManager] = {}
        self._inflight: dict[int, tuple[str, TransferFuture]] = {}  # id -> (uri, s3transfer future)
        self._lock = threading.Lock()
        self._payload_hashes = _PayloadHashes(client)

    def upload(
        self,
        source: str | IO[bytes],
        bucket: str,
        key: str,
        chunk: int,
        progress: Callable[[int], None] | None,
        payload_hashes: bool = False,
    ) -> dict[int, str] | None:
        """Upload one file (a local path, or a seekable binary stream read from its start). With
        `payload_hashes`: the SHA-256 (hex) botocore signed for each part sent, by part number (0 for
        a single-part PutObject); None without."""
        if payload_hashes:
            self._payload_hashes.watch(bucket, key)
        try:
            future = self._manager(chunk).upload(source, bucket, key, subscribers=_subscribers(progress))
            self._wait(future, f"s3://{bucket}/{key}")
        finally:
            hashes = self._payload_hashes.unwatch(bucket, key) if payload_hashes else None
        return hashes

    def download(
        self,
        bucket: str,
        key: str,
        target: str | HashingFile,
        chunk: int,
        progress: Callable[[int], None] | None,
        size: int | None = None,
        etag: str | None = None,
    ) -> None:
        """Download one object into a local path or a seekable file object (written at offsets).

        A known `size` (the manifest's) is given to s3transfer up front; with the object's `etag`
        too, s3transfer sends no HeadObject (it needs both: the size to plan the ranged parts,
        the ETag for their If-Match).
        """
        known = [_known(size, etag)] if size is not None else []
        subscribers = (_subscribers(progress) or []) + known
        # A file object is only ever seek()ed and write()n (DownloadSeekableOutputManager); its
        # stub asks for a full IO[Any].
        fileobj = target if isinstance(target, str) else cast("IO[bytes]", target)
        future = self._manager(chunk).download(bucket, key, fileobj, subscribers=subscribers or None)
        self._wait(future, f"s3://{bucket}/{key}")

    def cancel(self, uris: set[str] | None = None) -> int:
        """Cancel the transfers of these URIs (all when None): no further part is sent.

        A request already on the wire runs to its own timeout; the transfer then ends as
        cancelled. Returns how many transfers were cancelled.
        """
        with self._lock:
            doomed = [f for uri, f in self._inflight.values() if uris is None or uri in uris]
        for future in doomed:
            future.cancel()
        return len(doomed)

    def close(self) -> None:
        """Stop the worker threads (called when the owning filesystem is dropped, maybe by gc).

        Never blocks: transfers still in flight (abandoned after a deadline) are cancelled and
        their managers shut down in the background once the requests on the wire end.
        """
        with self._lock:
            managers, self._managers = list(self._managers.values()), {}
            busy = bool(self._inflight)
        if busy:
            self.cancel()
            threading.Thread(target=_shutdown_all, args=(managers,), name="s3bulk-close", daemon=True).start()
        else:
            _shutdown_all(managers)

    def _wait(self, future: TransferFuture, uri: str) -> None:
        with self._lock:
            self._inflight[id(future)] = (uri, future)
        try:
            _wait(future, uri)
        finally:
            with self._lock:
                self._inflight.pop(id(future), None)

    def _manager(self, chunk: int) -> TransferManager:
        with self._lock:
            if chunk not in self._managers:
                config = TransferConfig(
                    multipart_threshold=chunk,
                    multipart_chunksize=chunk,
                    max_request_concurrency=self.threads,
                    max_in_memory_upload_chunks=self.threads,
                    max_in_memory_download_chunks=self.threads,
                    num_download_attempts=5,
                    # Downloads read the stream in io chunks, each one write task for the single
                    # IO thread (and one sha256 update). 512 KiB: s3transfer's 256 KiB cost
                    # ~0.07 s more CPU per 200 MiB restore in bench/storage.py, and 1 MiB made
                    # a 600 MiB restore 1.6-1.8x slower than raw s3transfer on this 2-core VM
                    # (perf: 79% of the time in the kernel's copy of pwrite data into the page
                    # cache), where 512 KiB measured 1.01x. 16 of them wait at most (8 MiB).
                    max_io_queue_size=16,
                    io_chunksize=IO_CHUNK,
                )
                # daemon threads: an abandoned transfer must never hold the process open (threads.py).
                # s3transfer only calls executor_cls(max_workers=n), .submit and .shutdown(wait); its
                # stub admits just ThreadPoolExecutor and its own BaseExecutor, not any Executor.
                self._managers[chunk] = TransferManager(
                    self.client,
                    config,
                    executor_cls=DaemonThreadPool,  # type: ignore[arg-type]
                )
            return self._managers[chunk]


class _PayloadHashes:
    """The signed payload SHA-256 of each part of the uploads being watched (module docstring).

    `before-parameter-build` tags the request context of an UploadPart or PutObject of a watched
    object with its part number; `before-send`, called with the signed request (for every attempt:
    a retried part is signed again, over the same bytes), reads the hash from its header. A value
    that is not a hex SHA-256 (`UNSIGNED-PAYLOAD`, a streaming marker) is not kept.
    """

    _TAG = "sphinxx_payload_hash"

    def __init__(self, client: S3Client):
        self._lock = threading.Lock()
        self._watched: dict[tuple[str, str], dict[int, str]] = {}
        events = client.meta.events
        for operation in ("UploadPart", "PutObject"):
            events.register(f"before-parameter-build.s3.{operation}", self._tag)
            events.register(f"before-send.s3.{operation}", self._sent)

    def watch(self, bucket: str, key: str) -> None:
        with self._lock:
            self._watched[(bucket, key)] = {}

    def unwatch(self, bucket: str, key: str) -> dict[int, str]:
        with self._lock:
            return self._watched.pop((bucket, key), {})

    def _tag(self, params: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> None:
        target = (params.get("Bucket"), params.get("Key"))
        with self._lock:
            if target in self._watched:
                context[self._TAG] = (target, int(params.get("PartNumber", 0)))

    def _sent(self, request: Any, **kwargs: Any) -> None:
        tag = getattr(request, "context", {}).get(self._TAG)
        if tag is None:
            return
        value = request.headers.get("X-Amz-Content-SHA256", b"")
        value = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
        if len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
            return
        target, part = tag
        with self._lock:
            if target in self._watched:
                self._watched[target][part] = value


def _shutdown_all(managers: list[TransferManager]) -> None:
    for manager in managers:
        manager.shutdown()


def _subscribers(progress: Callable[[int], None] | None) -> list[BaseSubscriber] | None:
    if progress is None:
        return None
    report = progress  # not None: the class body below does not see the narrowing of `progress`

    class Progress(BaseSubscriber):
        def on_progress(self, future: TransferFuture, bytes_transferred: int, **kwargs: Any) -> None:
            report(bytes_transferred)  # negative when a part is retried

    return [Progress()]


def _known(size: int, etag: str | None) -> BaseSubscriber:
    """A subscriber that gives s3transfer the object's size (and ETag) up front."""

    class Known(BaseSubscriber):
        def on_queued(self, future: TransferFuture, **kwargs: Any) -> None:
            future.meta.provide_transfer_size(size)
            if etag is not None:
                future.meta.provide_object_etag(etag)

    return Known()


def _wait(future: TransferFuture, uri: str) -> None:
    """Wait; re-raise failures as the OSError family s3fs uses (PermissionError, FileNotFoundError, EIO)."""
    try:
        future.result()
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in _PERMISSION_CODES:
            raise PermissionError(errno.EACCES, f"{code}: {err}", uri) from err
        if code in _MISSING_CODES:
            raise FileNotFoundError(errno.ENOENT, f"{code}: {err}", uri) from err
        raise OSError(errno.EIO, f"{code}: {err}", uri) from err
    except BotoCoreError as err:  # connection/timeouts after botocore's retries: transient
        raise OSError(errno.EIO, f"{type(err).__name__}: {err}", uri) from err
    except Exception as err:
        # s3transfer's, for a download stream cut repeatedly, and for a ranged part whose If-Match
        # failed (the object changed since its ETag was read): transient, the file is retried.
        if type(err).__name__ in ("RetriesExceededError", "S3DownloadFailedError"):
            raise OSError(errno.EIO, str(err), uri) from err
        raise
