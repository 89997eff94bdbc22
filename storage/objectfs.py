"""`ObjectFS`, the narrow seam every other storage module uses, and `open_fs`, which makes one.

`open_fs(uri, options)` returns an `ObjectFS`: a handful of URI-in, bytes-out operations over
an fsspec filesystem (for `s3://`, the s3fs filesystem clients.py builds). Small objects and
listings go through fsspec (listing.py reads its entries; conditional.py makes the create-once
and compare-and-swap writes); whole files on S3 go through s3bulk.py. Whatever the client stack
raises becomes a `StorageAccessError` naming the URI (errors.guard).

`file://` and `memory://` go through the same methods, so tests of the commit
protocol on `memory://` exercise the code that runs against S3.
"""

from __future__ import annotations

import io
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

import fsspec
from fsspec.callbacks import Callback

from . import uri as uri_mod
from .clients import make_boto3_client, make_s3fs
from .conditional import create_local_once, put_conditionally, replace_local
from .errors import PreconditionFailedError, guard
from .hashing import FileDigest, Hasher, HashingFile, digest_of_parts
from .listing import ObjectInfo, children, files_below, list_objects, object_info
from .options import MiB, StorageOptions

if TYPE_CHECKING:
    from .s3bulk import S3Bulk


@dataclass
class ObjectFS:
    """URI-level operations over one fsspec filesystem (see the module docstring)."""

    fs: Any  # an fsspec AbstractFileSystem (fsspec and s3fs ship no type information)
    scheme: str
    options: StorageOptions = field(default_factory=StorageOptions)
    _conditional_ok: bool = True
    _bulk: S3Bulk | None = None  # built on first transfer

    # -- paths ----------------------------------------------------------------
    def path(self, uri: str) -> str:
        rest = uri.split("://", 1)[1] if "://" in uri else uri
        return "/" + rest if self.scheme == "memory" else rest

    # -- reads ----------------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        """The object's bytes; FileNotFoundError when absent."""
        with guard("read", uri, passthrough=(FileNotFoundError,)):
            return self.fs.cat_file(self.path(uri))

    def read_many(self, uris: list[str]) -> dict[str, bytes]:
        """Bytes of the objects that exist (fetched concurrently on S3); missing ones are left out."""
        if not uris:
            return {}
        paths = {self.path(u): u for u in uris}
        with guard("read", uris[0]):
            found = self.fs.cat(list(paths), on_error="omit")
        return {paths[p]: data for p, data in found.items() if isinstance(data, bytes) and p in paths}

    def exists(self, uri: str) -> bool:
        """Whether an object (not a folder) exists: one HEAD on S3 (s3fs's exists() also LISTs)."""
        with guard("check", uri):
            if self.scheme != "s3":
                return bool(self.fs.isfile(self.path(uri)))
            bucket, key, _ = self.fs.split_path(self.path(uri))
            try:
                self.fs.call_s3("head_object", Bucket=bucket, Key=key)
                return True
            except FileNotFoundError:
                return False

    def bucket_exists(self, uri: str) -> bool:
        """False only for an S3 bucket that does not exist (to tell "no checkpoints" from "wrong bucket")."""
        if self.scheme != "s3":
            return True
        bucket = self.path(uri).split("/", 1)[0]
        with guard("check bucket", f"s3://{bucket}"):
            try:
                self.fs.call_s3("head_bucket", Bucket=bucket)
                return True
            except FileNotFoundError:
                return False

    def etag(self, uri: str) -> str | None:
        """The object's ETag (one HEAD; s3fs's info() also LISTs when it is missing); None
        off S3. FileNotFoundError when absent."""
        if self.scheme != "s3":
            return None
        bucket, key, _ = self.fs.split_path(self.path(uri))
        with guard("stat", uri, passthrough=(FileNotFoundError,)):
            return self.fs.call_s3("head_object", Bucket=bucket, Key=key).get("ETag")

    def list_dir(self, uri: str) -> list[ObjectInfo]:
        """Immediate children of a folder; empty when it does not exist."""
        root = self.path(uri).rstrip("/")
        with guard("list", uri):
            try:
                entries = self.fs.ls(root, detail=True)
            except FileNotFoundError:
                return []
        return children(root, entries)

    def list_files(self, uri: str) -> dict[str, ObjectInfo]:
        """Every file below a folder, keyed by its path relative to the folder."""
        root = self.path(uri).rstrip("/")
        with guard("list", uri):
            try:
                found = (
                    list_objects(self.fs, root) if self.scheme == "s3" else self.fs.find(root, detail=True)
                )
            except FileNotFoundError:
                return {}
        return files_below(root, found)

    def info(self, uri: str) -> ObjectInfo | None:
        """Size, mtime and ETag of one object; None when it does not exist (or is a folder)."""
        with guard("stat", uri, passthrough=(FileNotFoundError,)):
            try:
                entry = self.fs.info(self.path(uri))
            except FileNotFoundError:
                return None
        if entry.get("type") == "directory":
            return None
        return object_info(uri.rstrip("/").rsplit("/", 1)[-1], entry)

    def part_size(self, uri: str) -> int | None:
        """Size of part 1 of a multipart S3 object (HeadObject PartNumber=1);
        None if not multipart or unknown."""
        if self.scheme != "s3":
            return None
        bucket, key, _ = self.fs.split_path(self.path(uri))
        with guard("stat", uri, passthrough=(FileNotFoundError,)):
            try:
                head = self.fs.call_s3("head_object", Bucket=bucket, Key=key, PartNumber=1)
            except FileNotFoundError:
                return None
            except OSError:
                return None  # a store without per-part HEAD: the caller falls back to the size check
        if not head.get("PartsCount"):
            return None
        return int(head["ContentLength"])

    def open_read(self, uri: str, block_size: int = 8 * MiB) -> BinaryIO:
        """A binary stream over the object (read-ahead of `block_size` on S3, never the whole object)."""
        with guard("open", uri, passthrough=(FileNotFoundError,)):
            return self.fs.open(self.path(uri), "rb", block_size=block_size)

    # -- writes ---------------------------------------------------------------
    def write_bytes(
        self, uri: str, data: bytes, *, create_only: bool = False, if_match: str | None = None
    ) -> None:
        """Write one small object. `create_only`: FileExistsError if it exists (conditional.py).

        `if_match`: on S3, only overwrite if the object's ETag is still this one
        (PreconditionFailedError otherwise); ignored elsewhere.
        """
        path = self.path(uri)
        with guard("write", uri, passthrough=(FileExistsError, PreconditionFailedError)):
            conditional = self.scheme == "s3" and self._use_conditional()
            if create_only and self.scheme == "file":
                create_local_once(path, data)
            elif create_only and not conditional:
                if self.fs.exists(path):
                    raise FileExistsError(uri)
                self.fs.pipe_file(path, data)
            elif create_only or (if_match and conditional):
                put_conditionally(
                    self.fs,
                    uri,
                    path,
                    data,
                    create_only=create_only,
                    if_match=if_match,
                    required=self.options.conditional_writes == "on",
                    unsupported=self._stop_conditional_writes,
                )
            else:
                self.fs.pipe_file(path, data)

    def replace_bytes(self, uri: str, data: bytes) -> None:
        """Overwrite one small object so that a reader sees the old bytes or the new, never a mix.

        A PUT on S3 and a write to `memory://` replace the object whole; on a local disk the bytes
        go to a temporary name beside it, which is then renamed over it (`os.replace`).
        """
        path = self.path(uri)
        with guard("write", uri):
            if self.scheme == "file":
                replace_local(path, data)
            else:
                self.fs.pipe_file(path, data)

    def _use_conditional(self) -> bool:
        return self.options.conditional_writes != "off" and self._conditional_ok

    def _stop_conditional_writes(self) -> None:
        """The store does not implement conditional writes: check-then-put from now on."""
        self._conditional_ok = False

    def put_file(
        self,
        local_path: str,
        uri: str,
        *,
        chunk_size: int,
        callback: Callback | None = None,
        digest: bool = False,
    ) -> FileDigest | None:
        """Upload one local file (on S3: multipart with `chunk_size` parts, see s3bulk.py).

        `callback` is an fsspec Callback; on S3 it may go backwards when a part is retried.
        With `digest`, where `signs_payloads`: the file's digest from the SHA-256 that botocore
        signed for each part it sent (the whole file's for a single-part upload, else the part
        tree, hashing.PartTreeDigest). None otherwise, or if a part's hash is missing: the caller
        then hashes the file itself.
        """
        if self.scheme != "s3":
            self.fs.put_file(local_path, self.path(uri), **({"callback": callback} if callback else {}))
            return None
        bucket, key, _ = self.fs.split_path(self.path(uri))
        watch = digest and self.signs_payloads
        hashes = self._s3bulk().upload(local_path, bucket, key, chunk_size, _relative(callback), watch)
        if not hashes:
            return None
        return digest_of_parts(hashes, os.path.getsize(local_path), chunk_size)

    def put_bytes(
        self,
        data: bytes,
        uri: str,
        *,
        chunk_size: int,
        callback: Callback | None = None,
        digest: bool = False,
    ) -> FileDigest | None:
        """Upload bytes held in memory as one object, exactly as `put_file` uploads a file of those
        bytes (the same parts, so the same digest): a checkpoint streamed from host memory needs no
        local disk. Each call reads `data` from its start, so a whole-object retry sends it again."""
        if self.scheme != "s3":
            self.fs.pipe_file(self.path(uri), data)
            return None
        bucket, key, _ = self.fs.split_path(self.path(uri))
        watch = digest and self.signs_payloads
        # BytesIO over a bytes object shares its buffer: s3transfer reads one part at a time.
        source = io.BytesIO(data)
        hashes = self._s3bulk().upload(source, bucket, key, chunk_size, _relative(callback), watch)
        if not hashes:
            return None
        return digest_of_parts(hashes, len(data), chunk_size)

    @property
    def signs_payloads(self) -> bool:
        """Whether botocore signs the SHA-256 of every request body it sends to this store: S3 over
        plain HTTP (an in-cluster MinIO, moto). Over HTTPS it sends `UNSIGNED-PAYLOAD`."""
        endpoint = self.options.resolved_endpoint()
        return self.scheme == "s3" and endpoint is not None and endpoint.lower().startswith("http://")

    def get_file(
        self,
        uri: str,
        local_path: str,
        *,
        chunk_size: int,
        callback: Callback | None = None,
        size: int | None = None,
        etag: str | None = None,
        digest: Callable[[], Hasher] | None = None,
    ) -> str | None:
        """Download one object (on S3: ranged parts in parallel, see s3bulk.py).

        `size`, when known (a manifest's), is handed to the transfer; the caller then checks the
        downloaded size and checksum against what it expected. `size` and `etag` together (a
        listing's ETag) spare s3transfer's per-object HeadObject; the ranged parts are fetched
        with `If-Match: etag`, so an object replaced since the listing fails the download
        instead of mixing two versions. With `digest` (a hasher factory: a manifest's kind of
        sha256, hashing.FileDigest, or staging's `ETagDigest`), the S3 download hashes the bytes
        while they stream in (hashing.py) and returns the digest of the file written, so the
        caller need not read it again; None when it could not (another scheme, a part fetched
        twice): then the caller hashes the file itself.
        """
        os.makedirs(os.path.dirname(local_path) or ".", exist_ok=True)
        if self.scheme == "s3":
            bucket, key, _ = self.fs.split_path(self.path(uri))
            bulk, progress = self._s3bulk(), _relative(callback)
            if digest is None:
                bulk.download(bucket, key, local_path, chunk_size, progress, size, etag)
                return None
            with HashingFile(local_path, digest()) as sink:
                bulk.download(bucket, key, sink, chunk_size, progress, size, etag)
                return sink.hexdigest()
        self.fs.get_file(self.path(uri), local_path, **({"callback": callback} if callback else {}))
        return None

    def _s3bulk(self) -> S3Bulk:
        with _BULK_LOCK:
            if self._bulk is None:
                # Imported here, not at the head: s3bulk.py loads boto3's s3transfer and botocore
                # (about 0.3 s), which only a process that moves whole files over S3 needs.
                from .s3bulk import S3Bulk

                threads = self.options.file_concurrency * self.options.part_concurrency
                self._bulk = S3Bulk(make_boto3_client(self.options, max_connections=threads + 4), threads)
                # CheckpointStore drops filesystems every few minutes. Not at interpreter exit:
                # the process is ending, and waiting there on an abandoned transfer hung it.
                weakref.finalize(self, self._bulk.close).atexit = False
            return self._bulk

    def cancel_transfers(self, uris: set[str]) -> int:
        """Cancel in-flight whole-file transfers of these URIs (a save past its deadline)."""
        if self._bulk is None:
            return 0
        keys = (self.fs.split_path(self.path(uri))[:2] for uri in uris)
        return self._bulk.cancel({f"s3://{bucket}/{key}" for bucket, key in keys})

    def copy_file(self, src: str, dst: str) -> None:
        """Copy one object within the store (server-side on S3: no bytes pass through this process)."""
        with guard("copy", src, passthrough=(FileNotFoundError,)):
            self.fs.copy(self.path(src), self.path(dst))

    def delete_file(self, uri: str) -> None:
        with guard("delete", uri):
            try:
                self.fs.rm_file(self.path(uri))
            except FileNotFoundError:
                pass

    def delete_tree(self, uri: str) -> None:
        with guard("delete", uri):
            try:
                self.fs.rm(self.path(uri), recursive=True)
            except FileNotFoundError:
                pass


def open_fs(uri: str, options: StorageOptions | None = None) -> ObjectFS:
    """A fresh filesystem for `uri`'s scheme (never a cached one: credentials may have rotated)."""
    options = options or StorageOptions()
    scheme = uri_mod.scheme(uri)
    if scheme == "s3":
        return ObjectFS(make_s3fs(options), scheme, options)
    if scheme == "file":
        return ObjectFS(fsspec.filesystem("file", auto_mkdir=True, skip_instance_cache=True), scheme, options)
    # memory:// keeps its objects in a process-wide dict, so a fresh instance sees them all.
    return ObjectFS(fsspec.filesystem("memory", skip_instance_cache=True), scheme, options)


def _relative(callback: Callback | None) -> Callable[[int], None] | None:
    return None if callback is None else callback.relative_update


_BULK_LOCK = threading.Lock()
