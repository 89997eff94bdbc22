"""sha256 of files: after the fact (`sha256_file`), or while a download writes them (`HashingFile`;
staging checks a download against its S3 ETag the same way, with `ETagDigest`).

A restore used to download each file, then read it all again to check its sha256 against the
manifest: a second pass over every byte, serial after the last part landed. `HashingFile` is the
file object s3transfer writes a download into (`seek(offset)` then `write(data)`, from one
thread at a time); it hashes the bytes in file order while they arrive:

- a write that lands at the end of the hashed prefix is hashed from memory at once (a
  single-part download is hashed entirely this way);
- a write further on (a later ranged part, which lands out of order) goes to disk and is
  remembered as an interval; once the prefix reaches it, it is read back from the page cache
  and hashed, still during the download;
- a write below the hashed prefix (s3transfer re-fetching a part after a cut stream) means
  the digest may not be that of the bytes now on disk: the stream digest is given up
  (`hexdigest()` returns None) and the caller hashes the finished file instead.

So `hexdigest()` is either the sha256 of exactly the bytes in the file, or None. It is None as
well when some range was never written (a hole reads as zeros): only a complete prefix counts.

An upload to a plain-HTTP S3 endpoint needs no pass of its own either: `digest_of_parts` makes
its digest from the SHA-256 botocore signed for each part it sent (s3bulk.py): the whole file's
for a single PutObject, else the part tree (`PartTreeDigest`).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .options import MiB

HASH_BLOCK = 8 * MiB
DRAIN_BLOCK = 1 * MiB  # HashingFile reads back out-of-order writes in blocks of this size


def sha256_file(path: str) -> str:
    """The file's sha256. `hashlib.file_digest` reads into one reused buffer: reading 8 MiB blocks
    allocated (and page-faulted) a fresh buffer per block, 35% more CPU per byte, which a commit
    on a busy machine pays in wall time (bench/storage.py)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


class _PartHashes:
    """Hashes consecutive `part_size`-byte parts of a stream (one part when `part_size` is None)."""

    def __init__(self, new: Callable[[], Any], part_size: int | None = None):
        if part_size is not None and part_size < 1:
            raise ValueError(f"part_size must be positive, got {part_size}")
        self.part_size, self._new = part_size, new
        self._part = new()
        self._in_part = 0
        self._parts: list[bytes] = []

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = len(view) if self.part_size is None else min(len(view), self.part_size - self._in_part)
            self._part.update(view[:take])
            self._in_part += take
            view = view[take:]
            if self.part_size is not None and self._in_part == self.part_size:
                self._parts.append(self._part.digest())
                self._part, self._in_part = self._new(), 0

    def part_digests(self) -> list[bytes]:
        """The digest of every part so far, the last (shorter) one included."""
        return self._parts + ([self._part.digest()] if self._in_part else [])


class ETagDigest(_PartHashes):
    """S3's ETag of an unencrypted object, computed from its bytes in order: the MD5 of the bytes
    (a single-part upload), or with `part_size` the MD5 of the parts' MD5 digests followed by
    `-<parts>` (a multipart upload with parts of that size, the last one shorter)."""

    def __init__(self, part_size: int | None = None):
        super().__init__(functools.partial(hashlib.md5, usedforsecurity=False), part_size)

    def hexdigest(self) -> str:
        if self.part_size is None:
            return self._part.hexdigest()
        parts = self.part_digests()
        return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


class PartTreeDigest(_PartHashes):
    """The sha256 of a file uploaded in `part_size` parts, as a manifest records it: the sha256 of
    the concatenated (binary) sha256 digests of its parts, in order (`part_tree_hexdigest`)."""

    def __init__(self, part_size: int):
        super().__init__(hashlib.sha256, part_size)

    def hexdigest(self) -> str:
        return hashlib.sha256(b"".join(self.part_digests())).hexdigest()


def part_tree_hexdigest(part_hexdigests: Sequence[str]) -> str:
    """`PartTreeDigest`'s value from the parts' sha256 hex digests (e.g. the SigV4 payload hashes
    of an upload's parts, s3bulk.py)."""
    return hashlib.sha256(b"".join(bytes.fromhex(h) for h in part_hexdigests)).hexdigest()


@dataclass(frozen=True)
class FileDigest:
    """A file's sha256 as a manifest records it: of the whole file (`part_size` None), or the part
    tree of its `part_size` parts (`PartTreeDigest`)."""

    sha256: str
    part_size: int | None = None

    def new_hasher(self) -> Hasher:
        """A hasher that computes this kind of digest from the bytes in order."""
        return hashlib.sha256() if self.part_size is None else PartTreeDigest(self.part_size)

    def of_file(self, path: str) -> str:
        """This kind of digest of a local file."""
        if self.part_size is None:
            return sha256_file(path)
        hasher, buffer = PartTreeDigest(self.part_size), bytearray(HASH_BLOCK)  # one reused buffer
        view = memoryview(buffer)
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                hasher.update(view[:n])
        return hasher.hexdigest()


def digest_of_parts(part_hashes: dict[int, str], size: int, part_size: int) -> FileDigest | None:
    """The digest of a `size`-byte file uploaded in `part_size` parts, from each part's sha256 (hex)
    by part number (s3bulk.py's signed payload hashes): 0 alone is a single PutObject, whose hash
    is the whole file's; else the part tree. None when a part's hash is missing."""
    if set(part_hashes) == {0}:
        return FileDigest(part_hashes[0])
    parts = -(-size // part_size)
    if set(part_hashes) != set(range(1, parts + 1)):
        return None
    return FileDigest(part_tree_hexdigest([part_hashes[n] for n in range(1, parts + 1)]), part_size)


class HashingFile:
    """A write-only, seekable file that computes its digest (sha256 unless told otherwise, e.g.
    an `ETagDigest`) in offset order as it is written.

    s3transfer writes one file from one thread at a time (its IO thread, or the request thread
    of a single-part download); the lock makes each `seek`/`write` call atomic regardless.
    """

    def __init__(self, path: str, digest: Hasher | None = None):
        self.name = path
        self._file = open(path, "w+b", buffering=0)  # noqa: SIM115 (closed by close()); read back in _drain
        self._lock = threading.Lock()
        self._pos = 0
        self._digest: Hasher = digest if digest is not None else hashlib.sha256()
        self._hashed = 0  # bytes [0, _hashed) are in the digest
        self._starts: list[int] = []  # written intervals beyond the prefix: disjoint, sorted
        self._ends: list[int] = []
        self._stale = False  # a write below the prefix: stop hashing, the digest may not be the file's
        self._buffer: memoryview | None = None  # for reading back (_drain), allocated on first use

    # -- the file-object surface s3transfer uses ------------------------------
    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        with self._lock:
            self._check_open()
            if whence == os.SEEK_SET:
                self._pos = offset
            elif whence == os.SEEK_CUR:
                self._pos += offset
            else:
                self._pos = os.fstat(self._file.fileno()).st_size + offset
            return self._pos

    def tell(self) -> int:
        return self._pos

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        with self._lock:
            self._check_open()
            offset, fd = self._pos, self._file.fileno()
            done = 0
            while done < size:  # pwrite may write less than asked (a full disk raises)
                done += os.pwrite(fd, view[done:], offset + done)
            self._pos = offset + size
            if not self._stale:
                self._landed(offset, view)
        return size

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> HashingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def hexdigest(self) -> str | None:
        """The digest of the file's bytes, or None when the stream cannot vouch for it (module doc)."""
        with self._lock:
            if self._stale or self._starts:
                return None
            size = os.path.getsize(self.name) if self._file.closed else os.fstat(self._file.fileno()).st_size
            return self._digest.hexdigest() if self._hashed == size else None

    # -- bookkeeping ----------------------------------------------------------
    def _check_open(self) -> None:
        if self._file.closed:  # a late write from an abandoned transfer (never onto a reused fd)
            raise ValueError(f"I/O operation on closed file {self.name}")

    def _landed(self, offset: int, view: memoryview) -> None:
        end = offset + len(view)
        if offset < self._hashed:  # hashed bytes were written again, maybe with other bytes
            self._stale = True
            self._starts, self._ends = [], []
        elif offset == self._hashed:
            self._digest.update(view)
            self._hashed = end
            self._drain()
        else:
            self._add_interval(offset, end)

    def _add_interval(self, start: int, end: int) -> None:
        """Insert [start, end) into the sorted disjoint intervals, merging those it touches."""
        i = bisect.bisect_left(self._ends, start)  # the first interval ending at or after start
        j = bisect.bisect_right(self._starts, end)  # [i, j): the intervals touching [start, end)
        if i < j:
            start, end = min(start, self._starts[i]), max(end, self._ends[j - 1])
        self._starts[i:j], self._ends[i:j] = [start], [end]

    def _drain(self) -> None:
        """Hash, read back from the page cache, the written intervals the prefix now reaches."""
        fd = self._file.fileno()
        while self._starts and self._starts[0] <= self._hashed:
            # An interval may begin below the prefix: a later in-order write covered its head,
            # and the file holds that later write, which is what was hashed.
            end = self._ends[0]
            del self._starts[0], self._ends[0]
            while self._hashed < end:
                # Into one reused buffer: a fresh 8 MiB bytes per block is a fresh mapping to
                # fault in and unmap, which cost a 600 MiB restore more kernel time than the
                # download itself (bench/storage.py).
                if self._buffer is None:
                    self._buffer = memoryview(bytearray(DRAIN_BLOCK))
                want = self._buffer[: min(DRAIN_BLOCK, end - self._hashed)]
                got = os.preadv(fd, [want], self._hashed)
                if not got:  # shorter than written (truncated by someone else): give up
                    self._stale = True
                    return
                self._digest.update(want[:got])
                self._hashed += got
