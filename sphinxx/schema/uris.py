"""URIs in a spec: one rule for every field the field model marks `uri=` (`fields.check`).

A URI must say literally where it points. `s3://bucket/runs/../other-team` is
`s3://bucket/other-team` to a client that resolves dot segments and a key with `..` in it to one
that does not (S3 keys are plain strings), and in a `file://` URI it is plain traversal; `.`
segments, empty segments (`s3://bucket//x`) and backslashes are as ambiguous. Two kinds:

- `STORAGE`: what `sphinxx.storage` opens (weights, the tokenizer, data sources, the checkpoint
  prefix): `s3://bucket/...` (`s3a://` is read as `s3://`), `file:///abs/path`, `memory://name`,
  or a bare path, absolute or relative (`.demo/data/x`, `./data/x`: a segment that merely starts
  with a dot is a name). No `..`, `.` or empty segment (one trailing `/` is fine), no backslash,
  no other scheme (`gs://`, `http://`: storage cannot open them).
- `TRACKING`: an MLflow tracking URI (`http(s)://`, `postgresql://`, `sqlite:////abs/mlflow.db`,
  `databricks`, a path). MLflow's plugins own the schemes, and empty segments are part of its
  syntax (`sqlite:////abs`), so only: no `..` segment before the query (`?`) or fragment (`#`),
  no backslash.

`problem(value, kind)` names the first fault in one line (None: no fault); `pattern(kind)` is the
same rule as a regular expression without lookarounds, read alike by RE2 (the API server) and
Python's `re`, which the CRDs carry (`openapi.py`) so `kubectl apply` refuses what admission
refuses. `tests/schema/test_uris.py` checks that the two agree. `sphinxx.storage.uri.normalize`
applies `path_problem` to every `s3://` and `file://` URI it is handed, whoever built it.
"""

from __future__ import annotations

import re

STORAGE = "storage"
TRACKING = "tracking"
KINDS = (STORAGE, TRACKING)
STORAGE_SCHEMES = ("s3", "s3a", "file", "memory")  # sphinxx.storage.uri.SCHEMES, and its s3a alias
SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)", re.DOTALL)  # as storage/uri.py reads one

BACKSLASH = "must not contain a backslash (use '/' between segments)"
DOT_DOT = "must not have a '..' segment: write the path it means"
DOT = "must not have a '.' segment: write the path without it"
EMPTY = "must not have an empty segment ('//')"
NO_PATH = "names no path"

# One path segment of a storage URI: anything but '/' and '\', and not '.' or '..' (without a
# lookahead: a first character that is no dot, a dot and a second that is none, or two dots and more).
_SEGMENT = r"(?:[^/\\.]|\.[^/\\.]|\.\.[^/\\])[^/\\]*"
_PATH = rf"{_SEGMENT}(?:/{_SEGMENT})*/?"
# Empty, or a path after `s3://`, `s3a://`, `memory://`, `file:///`, `/`, `./` or nothing.
_STORAGE_PATTERN = rf"|(?:(?:[sS]3[aA]?|[mM][eE][mM][oO][rR][yY])://|[fF][iI][lL][eE]:///|\.?/)?{_PATH}"
# A segment of a tracking URI's path: anything but '/', '\', '?', '#', and not '..' (may be empty).
_TRACKING_SEGMENT = r"(?:[^/\\?#.][^/\\?#]*|\.(?:[^/\\?#.][^/\\?#]*)?|\.\.[^/\\?#]+)?"
_TRACKING_PATTERN = rf"{_TRACKING_SEGMENT}(?:/{_TRACKING_SEGMENT})*(?:[?#][^\\]*)?"


def problem(value: str, kind: str) -> str | None:
    """What is wrong with URI `value` of `kind` (STORAGE or TRACKING), in one line; None if nothing."""
    if kind == STORAGE:
        return storage_problem(value)
    if kind == TRACKING:
        return tracking_problem(value)
    raise ValueError(f"unknown URI kind {kind!r}; known: {', '.join(KINDS)}")


def pattern(kind: str) -> str:
    """The rule of `kind` as a regular expression (full match; RE2 and Python `re` alike)."""
    if kind not in KINDS:
        raise ValueError(f"unknown URI kind {kind!r}; known: {', '.join(KINDS)}")
    return _STORAGE_PATTERN if kind == STORAGE else _TRACKING_PATTERN


def path_problem(path: str) -> str | None:
    """What is wrong with a '/'-separated path (no leading '/'; one trailing '/' is fine)."""
    if "\\" in path:
        return BACKSLASH
    for segment in path.removesuffix("/").split("/"):
        if segment == "..":
            return DOT_DOT
        if segment == ".":
            return DOT
        if not segment:
            return EMPTY
    return None


def storage_problem(uri: str) -> str | None:
    if not uri:
        return None  # whether a field may be empty is its own constraint (min_length)
    if "\\" in uri:
        return BACKSLASH
    match = SCHEME.fullmatch(uri)
    if match is None:  # a bare path: absolute, or relative to where it is read (`./` allowed once)
        rest = uri[1:] if uri.startswith("/") else uri.removeprefix("./")
    else:
        scheme, rest = match.group(1).lower(), match.group(2)
        if scheme not in STORAGE_SCHEMES:
            return f"unsupported scheme {scheme}://: use s3://bucket/prefix, file:///abs/path or a path"
        if scheme == "file":
            if not rest.startswith("/"):
                return "a file:// URI must be absolute: write file:///abs/path"
            rest = rest[1:]
        elif not rest or rest.startswith("/"):
            if scheme == "memory":
                return "names no store: write memory://name/prefix"
            return "names no bucket: write s3://bucket/prefix"
    if not rest:
        return NO_PATH
    return path_problem(rest)


def tracking_problem(uri: str) -> str | None:
    if "\\" in uri:
        return BACKSLASH
    path = re.split(r"[?#]", uri, maxsplit=1)[0]
    return DOT_DOT if ".." in path.split("/") else None
