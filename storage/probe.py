"""Can these URIs be read (or written) with the credentials at hand? One short answer per URI.

Used by the pre-flight check (`sphinxx.sweep.inputs` says what to check): a read probe lists
the folder (or stats the object) and reads the first byte of one file, since a bucket policy can
allow LIST and deny GET; a write probe writes and deletes a small object under the prefix. Each
probe is a few requests, whatever the size of what it checks.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Literal

from . import uri as uri_mod
from .errors import StorageError
from .objectfs import open_fs
from .options import StorageOptions


def probe_read(uri: str, needs_any: Sequence[str] = (), options: StorageOptions | None = None) -> str | None:
    """None when `uri` (an object, or a folder holding a file ending with one of `needs_any`) is
    readable; else why not, in a few words."""
    try:
        norm = uri_mod.normalize(uri)
        fs = open_fs(norm, options)
        files = fs.list_files(norm)
        if not files:
            info = fs.info(norm)
            if info is None:
                return "does not exist (no object, and no files under it)"
            target = norm
        else:
            usable = sorted(n for n in files if not needs_any or n.endswith(tuple(needs_any)))
            if not usable:
                return f"holds {len(files)} files but none ending with {', '.join(needs_any)}"
            target = uri_mod.join(norm, usable[0])
        with fs.open_read(target, block_size=1024) as f:
            f.read(1)
    except StorageError as err:
        return _short(err)
    except Exception as err:  # noqa: BLE001 - any client failure (no credentials, ...) is the answer
        return f"cannot be read: {type(err).__name__}: {err}"
    return None


def probe_write(prefix: str, options: StorageOptions | None = None) -> str | None:
    """None when an object can be written (and deleted) under `prefix`; else why not."""
    try:
        norm = uri_mod.normalize(prefix)
        fs = open_fs(norm, options)
        probe = uri_mod.join(norm, f".sphinxx-preflight-{uuid.uuid4().hex[:12]}")
        fs.write_bytes(probe, b"sphinxx pre-flight write check; safe to delete\n")
        fs.delete_file(probe)
    except StorageError as err:
        return _short(err)
    except Exception as err:  # noqa: BLE001 - any client failure (no credentials, ...) is the answer
        return f"is not writable: {type(err).__name__}: {err}"
    return None


def probe(
    uri: str,
    access: Literal["read", "write"],
    needs_any: Sequence[str] = (),
    options: StorageOptions | None = None,
) -> str | None:
    """`probe_write` for a prefix the run writes, else `probe_read`: None when usable, else why not."""
    if access == "write":
        return probe_write(uri, options)
    return probe_read(uri, needs_any, options)


def _short(err: StorageError) -> str:
    text = str(err)
    return text.replace(err.uri, "").strip(" :") if err.uri and len(text) > len(err.uri) else text
