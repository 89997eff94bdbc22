"""The one filesystem factory, and the narrow seam every other storage module uses.

`open_fs(uri, options)` returns an `ObjectFS`: a handful of URI-in, bytes-out
operations over an fsspec filesystem. Nothing else in the project constructs an
S3 client. For `s3://` it builds an s3fs filesystem for small objects and
listings, and (`make_boto3_client`, used by s3bulk.py for whole-file
transfers) a boto3 client, both with:

- the endpoint from `StorageOptions.endpoint_url`, else `AWS_ENDPOINT_URL_S3`,
  else `AWS_ENDPOINT_URL` (MinIO, moto, Ceph...), else AWS itself;
- credentials from the default botocore chain (env, IRSA web identity, a
  named `profile`), resolved when the filesystem is built. fsspec's instance
  cache is switched off and `CheckpointStore` rebuilds its filesystem after
  `fs_max_age_s` (minutes, not days: stale credentials stopped uploads in
  ray#35524);
- botocore's retry mode (`standard`/`adaptive`, 10 attempts) as the single retry
  layer (s3fs's own retry loop is set to one try so attempts do not multiply),
  and connect/read timeouts;
- listing caches off: a reader must see a manifest the moment it exists.

`file://` and `memory://` go through the same methods, so tests of the commit
protocol on `memory://` exercise the code that runs against S3.

Conditional writes: `write_bytes(..., create_only=True)` uses a create-once PUT
(`If-None-Match: *`) on S3 (moto 5.2.5 and s3fs 2026.9 support it), an atomic
hard link on local disks, and an existence check on `memory://`. Stores that
answer `NotImplemented` fall back to check-then-put (mode `auto`); the commit
protocol stays correct without them because attempts never overlap
(docs/storage.md, "Commit protocol") and the committer reads its manifest back.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from . import uri as uri_mod
from .errors import StorageAccessError, StorageError
from .options import MiB, StorageOptions

# The client stacks are imported where used (`import sphinxx.storage` stays light);
# mypy_boto3_s3 is a stub-only package of the dev extra, never imported at run time.
if TYPE_CHECKING:
    from botocore.loaders import Loader
    from fsspec.callbacks import Callback
    from mypy_boto3_s3 import S3Client

    from .hashing import FileDigest, Hasher
    from .s3bulk import S3Bulk


class PreconditionFailedError(StorageError):
    """An If-Match write lost a race (someone else changed the object)."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str  # relative to the listed folder, '/'-separated
    size: int
    mtime: float | None  # seconds since the epoch; None when the store does not say
    is_dir: bool = False
    etag: str | None = None  # S3's ETag without its quotes (list_files, info); None elsewhere


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
        with _guard("read", uri, passthrough=(FileNotFoundError,)):
            return self.fs.cat_file(self.path(uri))

    def read_many(self, uris: list[str]) -> dict[str, bytes]:
        """Bytes of the objects that exist (fetched concurrently on S3); missing ones are left out."""
        if not uris:
            return {}
        paths = {self.path(u): u for u in uris}
        with _guard("read", uris[0]):
            found = self.fs.cat(list(paths), on_error="omit")
        return {paths[p]: data for p, data in found.items() if isinstance(data, bytes) and p in paths}

    def exists(self, uri: str) -> bool:
        """Whether an object (not a folder) exists: one HEAD on S3 (s3fs's exists() also LISTs)."""
        with _guard("check", uri):
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
        with _guard("check bucket", f"s3://{bucket}"):
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
        with _guard("stat", uri, passthrough=(FileNotFoundError,)):
            return self.fs.call_s3("head_object", Bucket=bucket, Key=key).get("ETag")

    def list_dir(self, uri: str) -> list[ObjectInfo]:
        """Immediate children of a folder; empty when it does not exist."""
        root = self.path(uri).rstrip("/")
        with _guard("list", uri):
            try:
                entries = self.fs.ls(root, detail=True)
            except FileNotFoundError:
                return []
        out = []
        for entry in entries:
            name = entry["name"].rstrip("/")
            if name == root:
                continue
            rel = name[len(root) + 1 :] if name.startswith(root + "/") else name.rsplit("/", 1)[-1]
            out.append(
                ObjectInfo(rel, int(entry.get("size") or 0), _mtime(entry), entry["type"] == "directory")
            )
        return out

    def list_files(self, uri: str) -> dict[str, ObjectInfo]:
        """Every file below a folder, keyed by its path relative to the folder."""
        root = self.path(uri).rstrip("/")
        with _guard("list", uri):
            try:
                found = self._list_s3(root) if self.scheme == "s3" else self.fs.find(root, detail=True)
            except FileNotFoundError:
                return {}
        out = {}
        for name, entry in found.items():
            if entry.get("type") == "directory" or not name.startswith(root + "/"):
                continue
            rel = name[len(root) + 1 :]
            out[rel] = ObjectInfo(rel, int(entry.get("size") or 0), _mtime(entry), etag=_etag(entry))
        return out

    def _list_s3(self, root: str) -> dict[str, dict[str, Any]]:
        """ListObjectsV2 below `root/`, every page: s3fs's find() sends a HEAD and another LIST
        when the folder is empty, which is what every new checkpoint step is."""
        bucket, key, _ = self.fs.split_path(root)
        prefix = f"{key}/" if key else ""
        found: dict[str, dict[str, Any]] = {}
        token: dict[str, str] = {}
        while True:
            page = self.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, **token)
            for entry in page.get("Contents", []):
                found[f"{bucket}/{entry['Key']}"] = {**entry, "size": entry.get("Size"), "type": "file"}
            if not page.get("IsTruncated"):
                return found
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def info(self, uri: str) -> ObjectInfo | None:
        """Size, mtime and ETag of one object; None when it does not exist (or is a folder)."""
        with _guard("stat", uri, passthrough=(FileNotFoundError,)):
            try:
                entry = self.fs.info(self.path(uri))
            except FileNotFoundError:
                return None
        if entry.get("type") == "directory":
            return None
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        return ObjectInfo(name, int(entry.get("size") or 0), _mtime(entry), etag=_etag(entry))

    def part_size(self, uri: str) -> int | None:
        """Size of part 1 of a multipart S3 object (HeadObject PartNumber=1); None if not multipart or unknown."""
        if self.scheme != "s3":
            return None
        bucket, key, _ = self.fs.split_path(self.path(uri))
        with _guard("stat", uri, passthrough=(FileNotFoundError,)):
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
        with _guard("open", uri, passthrough=(FileNotFoundError,)):
            return self.fs.open(self.path(uri), "rb", block_size=block_size)

    # -- writes ---------------------------------------------------------------
    def write_bytes(
        self, uri: str, data: bytes, *, create_only: bool = False, if_match: str | None = None
    ) -> None:
        """Write one small object. `create_only`: FileExistsError if it exists (see module docstring).

        `if_match`: on S3, only overwrite if the object's ETag is still this one
        (PreconditionFailedError otherwise); ignored elsewhere.
        """
        path = self.path(uri)
        with _guard("write", uri, passthrough=(FileExistsError, PreconditionFailedError)):
            conditional = self.scheme == "s3" and self._use_conditional()
            if create_only and self.scheme == "file":
                _create_local_once(path, data)
            elif create_only and not conditional:
                if self.fs.exists(path):
                    raise FileExistsError(uri)
                self.fs.pipe_file(path, data)
            elif create_only or (if_match and conditional):
                self._conditional_put(uri, path, data, create_only, if_match)
            else:
                self.fs.pipe_file(path, data)

    def _use_conditional(self) -> bool:
        return self.options.conditional_writes != "off" and self._conditional_ok

    def _conditional_put(
        self, uri: str, path: str, data: bytes, create_only: bool, if_match: str | None
    ) -> None:
        kwargs = {"mode": "create"} if create_only else {"IfMatch": if_match}
        try:
            self.fs.pipe_file(path, data, **kwargs)
        except FileExistsError:
            raise
        except OSError as err:
            code = _client_error_code(err)
            if code == "PreconditionFailed":
                raise PreconditionFailedError(f"{uri} changed while we were updating it", uri) from err
            if (
                err.errno != errno.ENOSYS
                and code != "NotImplemented"
                or self.options.conditional_writes == "on"
            ):
                raise
            # The store does not implement conditional writes: remember, then check-then-put.
            self._conditional_ok = False
            if create_only and self.fs.exists(path):
                raise FileExistsError(uri) from None
            self.fs.pipe_file(path, data)

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
        from .hashing import FileDigest, part_tree_hexdigest

        if set(hashes) == {0}:  # a single PutObject: the sha256 of the whole file
            return FileDigest(hashes[0])
        parts = -(-os.path.getsize(local_path) // chunk_size)
        if set(hashes) != set(range(1, parts + 1)):
            return None
        return FileDigest(part_tree_hexdigest([hashes[n] for n in range(1, parts + 1)]), chunk_size)

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
            from .hashing import HashingFile

            with HashingFile(local_path, digest()) as sink:
                bulk.download(bucket, key, sink, chunk_size, progress, size, etag)
                return sink.hexdigest()
        self.fs.get_file(self.path(uri), local_path, **({"callback": callback} if callback else {}))
        return None

    def _s3bulk(self) -> S3Bulk:
        with _BULK_LOCK:
            if self._bulk is None:
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
        with _guard("copy", src, passthrough=(FileNotFoundError,)):
            self.fs.copy(self.path(src), self.path(dst))

    def delete_file(self, uri: str) -> None:
        with _guard("delete", uri):
            try:
                self.fs.rm_file(self.path(uri))
            except FileNotFoundError:
                pass

    def delete_tree(self, uri: str) -> None:
        with _guard("delete", uri):
            try:
                self.fs.rm(self.path(uri), recursive=True)
            except FileNotFoundError:
                pass


def open_fs(uri: str, options: StorageOptions | None = None) -> ObjectFS:
    """A fresh filesystem for `uri`'s scheme (never a cached one: credentials may have rotated)."""
    options = options or StorageOptions()
    scheme = uri_mod.scheme(uri)
    if scheme == "s3":
        return ObjectFS(_make_s3fs(options), scheme, options)
    import fsspec

    if scheme == "file":
        return ObjectFS(fsspec.filesystem("file", auto_mkdir=True, skip_instance_cache=True), scheme, options)
    # memory:// keeps its objects in a process-wide dict, so a fresh instance sees them all.
    return ObjectFS(fsspec.filesystem("memory", skip_instance_cache=True), scheme, options)


_LOADER: Loader | None = None


def _make_s3fs(options: StorageOptions) -> Any:
    import s3fs
    from aiobotocore.session import AioSession

    global _LOADER
    client_kwargs: dict[str, Any] = {}
    if options.region:
        client_kwargs["region_name"] = options.region
    # A new session per filesystem (fresh credentials), sharing only botocore's parsed
    # service models: loading them is most of the ~0.5 s a new client costs.
    session = AioSession(profile=options.profile) if options.profile else AioSession()
    _LOADER = _LOADER or create_loader_lazily()
    session.register_component("data_loader", _LOADER)
    fs = s3fs.S3FileSystem(
        endpoint_url=options.resolved_endpoint(),
        client_kwargs=client_kwargs,
        config_kwargs={
            # total_max_attempts counts the first try (botocore's max_attempts would not).
            "retries": {"mode": options.retry_mode, "total_max_attempts": options.max_attempts},
            "connect_timeout": options.connect_timeout_s,
            "read_timeout": options.read_timeout_s,
        },
        use_listings_cache=False,
        skip_instance_cache=True,
        # 1: cat_file() then reads an object with one GET. Above 1 it first HEADs it, to fetch
        # large objects in ranged parts; whole-file transfers go through s3bulk.py instead.
        max_concurrency=1,
        session=session,
    )
    fs.retries = 1  # botocore retries; s3fs's own loop on top would multiply attempts (10 x 5)
    return fs


def make_boto3_client(options: StorageOptions, max_connections: int = 10) -> S3Client:
    """A boto3 S3 client with the same endpoint, credentials, retries and timeouts as the s3fs filesystem."""
    import boto3
    import botocore.session
    from botocore.config import Config

    global _LOADER
    core = botocore.session.get_session()
    _LOADER = _LOADER or create_loader_lazily()
    core.register_component("data_loader", _LOADER)
    session = boto3.session.Session(botocore_session=core, profile_name=options.profile)
    config = Config(
        retries={"mode": options.retry_mode, "total_max_attempts": options.max_attempts},
        connect_timeout=options.connect_timeout_s,
        read_timeout=options.read_timeout_s,
        max_pool_connections=max_connections,
    )
    return session.client(
        "s3", endpoint_url=options.resolved_endpoint(), region_name=options.region, config=config
    )


def create_loader_lazily() -> Loader:
    from botocore.loaders import create_loader

    return create_loader()


def _relative(callback: Callback | None) -> Callable[[int], None] | None:
    return None if callback is None else callback.relative_update


_BULK_LOCK = threading.Lock()


@contextlib.contextmanager
def _guard(op: str, uri: str, passthrough: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turn whatever the client raised into a StorageAccessError that names the URI."""
    try:
        yield
    except passthrough:
        raise
    except StorageError:
        raise
    except PermissionError as err:
        raise StorageAccessError(f"{op} {uri}: access denied ({err})", uri) from err
    except FileNotFoundError as err:
        raise StorageAccessError(f"{op} {uri}: not found ({err}); does the bucket exist?", uri) from err
    except (OSError, TimeoutError, ValueError, RuntimeError) as err:
        raise StorageAccessError(f"{op} {uri} failed: {type(err).__name__}: {err}", uri) from err
    except Exception as err:
        # botocore's own errors (NoCredentialsError, EndpointConnectionError, ...) derive from neither
        if type(err).__module__.split(".")[0] in ("botocore", "aiobotocore"):
            raise StorageAccessError(f"{op} {uri} failed: {type(err).__name__}: {err}", uri) from err
        raise


def _client_error_code(err: BaseException) -> str | None:
    cause = err.__cause__
    response = getattr(cause, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def _create_local_once(path: str, data: bytes) -> None:
    """Atomic create-once on a POSIX disk: write a temp file, hard-link it into place."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{uuid.uuid4().hex[:8]}-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # fails with FileExistsError if someone got there first
    finally:
        os.unlink(tmp)


def _etag(entry: dict[str, Any]) -> str | None:
    tag = entry.get("ETag") or entry.get("etag")
    return str(tag).strip('"') if tag else None


def _mtime(entry: dict[str, Any]) -> float | None:
    for key in ("LastModified", "mtime", "created"):
        value = entry.get(key)
        if isinstance(value, dt.datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
    return None
