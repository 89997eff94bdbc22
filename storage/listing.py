"""What a folder holds: `ObjectInfo`, read from the listing entries of fsspec and S3.

Each fsspec backend describes an object in its own words (s3fs: `LastModified` and a quoted
`ETag`; the local disk: `mtime`; `memory://`: `created`). These functions turn a listing into
`ObjectInfo`s named relative to the listed folder, and `list_objects` lists an S3 prefix with
ListObjectsV2 alone. No I/O but that one call, which `ObjectFS` (objectfs.py) makes inside its
error guard.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ObjectInfo:
    name: str  # relative to the listed folder, '/'-separated
    size: int
    mtime: float | None  # seconds since the epoch; None when the store does not say
    is_dir: bool = False
    etag: str | None = None  # S3's ETag without its quotes (list_files, info); None elsewhere


def children(root: str, entries: list[dict[str, Any]]) -> list[ObjectInfo]:
    """The entries of `ls(root)`, the folder itself left out, named relative to `root`."""
    out = []
    for entry in entries:
        name = entry["name"].rstrip("/")
        if name == root:
            continue
        rel = name[len(root) + 1 :] if name.startswith(root + "/") else name.rsplit("/", 1)[-1]
        out.append(ObjectInfo(rel, int(entry.get("size") or 0), _mtime(entry), entry["type"] == "directory"))
    return out


def files_below(root: str, found: dict[str, dict[str, Any]]) -> dict[str, ObjectInfo]:
    """The files of `find(root)` (or `list_objects`), keyed by their path relative to `root`."""
    out = {}
    for name, entry in found.items():
        if entry.get("type") == "directory" or not name.startswith(root + "/"):
            continue
        rel = name[len(root) + 1 :]
        out[rel] = object_info(rel, entry)
    return out


def object_info(name: str, entry: dict[str, Any]) -> ObjectInfo:
    """One file's listing or `info` entry."""
    return ObjectInfo(name, int(entry.get("size") or 0), _mtime(entry), etag=_etag(entry))


def list_objects(fs: Any, root: str) -> dict[str, dict[str, Any]]:
    """ListObjectsV2 below `root/` on an s3fs filesystem, every page: s3fs's find() sends a HEAD
    and another LIST when the folder is empty, which is what every new checkpoint step is."""
    bucket, key, _ = fs.split_path(root)
    prefix = f"{key}/" if key else ""
    found: dict[str, dict[str, Any]] = {}
    token: dict[str, str] = {}
    while True:
        page = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, **token)
        for entry in page.get("Contents", []):
            found[f"{bucket}/{entry['Key']}"] = {**entry, "size": entry.get("Size"), "type": "file"}
        if not page.get("IsTruncated"):
            return found
        token = {"ContinuationToken": page["NextContinuationToken"]}


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
