"""String URIs for everything the store touches: `s3://`, `file://`, `memory://`.

URIs stay strings (never `Path`) because most of them are remote. A bare local
path is accepted where a user types one and turned into `file://` with an
absolute path, so `sphinxx ckpt ls ./ckpts/run-1` works.

An `s3://` or `file://` URI is taken literally or not at all: a `..`, `.` or empty
segment, or a backslash, is refused (`sphinxx.schema.uris.path_problem`, the rule
admission applies to every URI field of a spec), because clients disagree on what
`s3://bucket/runs/../x` addresses and in a `file://` URI it is traversal. This
is defence in depth for URIs built from input that admission never saw.
"""

from __future__ import annotations

import os
import re

from sphinxx.schema.uris import path_problem

SCHEMES = ("s3", "file", "memory")
_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$")


def normalize(uri: str) -> str:
    """Canonical form: known scheme, no trailing slash, absolute local paths."""
    if not uri or not uri.strip():
        raise ValueError("empty storage URI: give s3://bucket/prefix, file:///path or memory://name")
    uri = uri.strip()
    match = _SCHEME_RE.match(uri)
    if match is None:
        return "file://" + os.path.abspath(os.path.expanduser(uri))
    scheme, rest = match.group(1).lower(), match.group(2)
    if scheme == "s3a":
        scheme = "s3"
    if scheme not in SCHEMES:
        raise ValueError(
            f"unsupported storage URI {uri!r}: use one of {', '.join(s + '://' for s in SCHEMES)}"
        )
    if scheme == "s3":
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise ValueError(f"S3 URI {uri!r} has no bucket: write s3://bucket/prefix")
        _literal(uri, rest)
    elif scheme == "file":
        if not rest.rstrip("/").startswith("/"):
            raise ValueError(f"file URI {uri!r} must be absolute: write file:///abs/path")
        _literal(uri, rest[1:])
    rest = rest.rstrip("/")
    if scheme == "memory":
        rest = rest.lstrip("/")
        if not rest:
            raise ValueError(f"memory URI {uri!r} needs a name: write memory://name/prefix")
    return f"{scheme}://{rest}"


def _literal(uri: str, path: str) -> None:
    """Refuse a path that does not say literally where it points (see the module docstring)."""
    fault = path_problem(path)
    if fault is not None:
        raise ValueError(f"storage URI {uri!r} {fault}")


def scheme(uri: str) -> str:
    return normalize(uri).split("://", 1)[0]


def join(uri: str, *parts: str) -> str:
    """Append path segments with '/', whatever the scheme."""
    out = uri.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def relative(uri: str, root: str) -> str:
    """`uri` relative to `root`; ValueError when it is not below it."""
    root = root.rstrip("/")
    if uri == root:
        return ""
    if not uri.startswith(root + "/"):
        raise ValueError(f"{uri} is not below {root}")
    return uri[len(root) + 1 :]


def validate_relpath(relpath: str) -> str:
    """A file name inside a checkpoint: relative, '/'-separated, no '..' or empty parts."""
    clean = relpath.replace(os.sep, "/").strip("/")
    parts = clean.split("/")
    if not clean or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"invalid file name inside a checkpoint: {relpath!r} (use a relative path like model/rank0.pt)"
        )
    return clean
