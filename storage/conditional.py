"""Conditional writes of small objects: create-once and compare-and-swap, on every scheme.

`ObjectFS.write_bytes(..., create_only=True)` is a create-once PUT (`If-None-Match: *`) on S3
(moto 5.2.5 and s3fs 2026.9 support it; `put_conditionally`), an atomic hard link on local disks
(`create_local_once`), and an existence check on `memory://`; `if_match=etag` is a
compare-and-swap on S3. Stores that answer `NotImplemented` fall back to check-then-put (mode
`auto`); the commit protocol stays correct without them because attempts never overlap
(docs/storage.md, "Commit protocol") and the committer reads its manifest back.
"""

from __future__ import annotations

import errno
import os
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

from .errors import PreconditionFailedError, client_error_code


def put_conditionally(
    fs: Any,
    uri: str,
    path: str,
    data: bytes,
    *,
    create_only: bool,
    if_match: str | None,
    required: bool,
    unsupported: Callable[[], None],
) -> None:
    """PUT `data` to `path` of an s3fs filesystem only if it does not exist (`create_only`), else
    only if its ETag is still `if_match`: FileExistsError or PreconditionFailedError otherwise.

    A store that does not implement conditional writes fails the write when they are `required`;
    else `unsupported()` is told (the caller stops asking for them) and the write is
    check-then-put.
    """
    kwargs = {"mode": "create"} if create_only else {"IfMatch": if_match}
    try:
        fs.pipe_file(path, data, **kwargs)
    except FileExistsError:
        raise
    except OSError as err:
        code = client_error_code(err)
        if code == "PreconditionFailed":
            raise PreconditionFailedError(f"{uri} changed while we were updating it", uri) from err
        if err.errno != errno.ENOSYS and code != "NotImplemented" or required:
            raise
        # The store does not implement conditional writes: remember, then check-then-put.
        unsupported()
        if create_only and fs.exists(path):
            raise FileExistsError(uri) from None
        fs.pipe_file(path, data)


def create_local_once(path: str, data: bytes) -> None:
    """Atomic create-once on a POSIX disk: write a temp file, hard-link it into place."""
    tmp = _write_beside(path, data, sync=True)
    try:
        os.link(tmp, path)  # fails with FileExistsError if someone got there first
    finally:
        os.unlink(tmp)


def replace_local(path: str, data: bytes) -> None:
    """Atomic overwrite on a POSIX disk: write a temp file beside `path`, rename it over `path`."""
    tmp = _write_beside(path, data, sync=False)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _write_beside(path: str, data: bytes, *, sync: bool) -> str:
    """`data` in a new temp file in `path`'s folder (made if missing), flushed to disk if `sync`;
    its name. Nothing is left behind if the write fails."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{uuid.uuid4().hex[:8]}-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp
