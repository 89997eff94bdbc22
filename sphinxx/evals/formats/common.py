"""What every importer shares: the files it reads, the request, the result, per-record guards.

An importer is a pure function `(Files, ImportRequest) -> Imported`: it reads the official files
through `Files` (the job's command hands it one over the storage layer) and returns the records,
the problems of the records it skipped, and the images it decoded (MMBench ships them inline).
A record that cannot be built is skipped with a `Problem` naming where it is and why; it is never
dropped silently and never stops the import. A file that cannot be read at all is a `FormatError`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sphinxx.schema.fields import SchemaError

from ..task import TaskRecord

IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpg", b"GIF8": "gif", b"RIFF": "webp"}
LISTED_PROBLEMS = 1000  # skipped records listed one by one in a report; all are counted
T = TypeVar("T")


class Files(Protocol):
    """Read access to the source: URIs in, bytes out."""

    def read(self, uri: str) -> bytes: ...  # FileNotFoundError when absent

    def exists(self, uri: str) -> bool: ...

    def names(self, uri: str) -> list[str]: ...  # the files directly in a folder, sorted


class FormatError(ValueError):
    """A source file that cannot be read as its format says (the message names the file)."""


@dataclass(frozen=True)
class ImportRequest:
    fmt: str
    src: str  # the source URI (normalised)
    images: str | None = None  # the image root; None: the format's default beside the source
    split: str | None = None  # keep only this split
    annotations: str | None = None  # the companion file (VQAv2 answers, RefCOCO instances)
    image_out: str = ""  # where decoded images go (MMBench): a folder beside the destination


@dataclass(frozen=True)
class Problem:
    where: str  # the record's place: file and id or line
    reason: str  # why it was skipped, without the place (so reasons can be counted)


@dataclass
class Imported:
    records: list[TaskRecord] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)  # URI -> bytes to write
    notes: list[str] = field(default_factory=list)
    filtered: int = 0  # records of other splits (--split) or outside the benchmark (ScienceQA-IMG)

    def add(self, where: str, build: Callable[..., TaskRecord | list[TaskRecord] | None], *item: Any) -> None:
        """Build one source item's record(s) (`build(*item)`); a failure is recorded as a problem, skipped."""
        built = attempt(where, build, *item)
        if isinstance(built, Problem):
            self.problems.append(built)
            return
        self.records += [] if built is None else built if isinstance(built, list) else [built]


def attempt(where: str, build: Callable[..., T], *item: Any) -> T | Problem:
    """`build(*item)`, or the `Problem` that says why the item at `where` cannot be built."""
    try:
        return build(*item)
    except SchemaError as err:
        return Problem(where, f"field {err.path}: {err.reason}")
    except KeyError as err:
        return Problem(where, f"missing field {err.args[0]!r}")
    except (TypeError, ValueError, IndexError, AttributeError) as err:
        return Problem(where, str(err) or type(err).__name__)


@dataclass
class ProblemLog:
    """Skipped records counted by reason, the first `LISTED_PROBLEMS` listed: a report in bounded memory."""

    skipped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    listed: list[Problem] = field(default_factory=list)

    def add(self, problem: Problem) -> None:
        self.skipped += 1
        self.reasons[problem.reason] += 1
        if len(self.listed) < LISTED_PROBLEMS:
            self.listed.append(problem)

    def summary(self) -> dict[str, Any]:
        """The report's `skipped`, `reasons` (most frequent first) and `problems` (where, reason)."""
        return {
            "skipped": self.skipped,
            "reasons": dict(self.reasons.most_common()),
            "problems": [{"where": p.where, "reason": p.reason} for p in self.listed],
        }

    @classmethod
    def of(cls, problems: list[Problem]) -> ProblemLog:
        log = cls()
        for problem in problems:
            log.add(problem)
        return log

    @classmethod
    def from_summary(cls, data: dict[str, Any]) -> ProblemLog:
        """The log a `summary()` was written from (an interrupted import goes on counting)."""
        listed = [Problem(p["where"], p["reason"]) for p in data["problems"]]
        return cls(int(data["skipped"]), Counter(data["reasons"]), listed)


def join(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}" if part.strip("/") else out
    return out


def parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def stem(uri: str) -> str:
    name = basename(uri)
    return name.rsplit(".", 1)[0] if "." in name else name


def read_json(files: Files, uri: str) -> Any:
    try:
        data = files.read(uri)
    except FileNotFoundError:
        raise FormatError(f"{uri}: no such file") from None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FormatError(f"{uri}: not JSON ({err})") from None


def field_of(item: Any, key: str) -> Any:
    """A required field of a source item (KeyError names it; a non-object item is a TypeError)."""
    if not isinstance(item, dict):
        raise TypeError(f"not an object: {str(item)[:80]!r}")
    return item[key]


def text(item: Any, key: str) -> str:
    """A required non-empty string field of a source item."""
    value = field_of(item, key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field {key!r} must be a non-empty string, got {value!r}")
    return value


def texts(item: Any, key: str) -> list[str]:
    """A required list of strings (VQA answers may be dicts with an "answer" key)."""
    value = field_of(item, key)
    if not isinstance(value, list):
        raise ValueError(f"field {key!r} must be a list, got {type(value).__name__}")
    out = [v["answer"] if isinstance(v, dict) else v for v in value]
    if not out or not all(isinstance(v, str) for v in out):
        raise ValueError(f"field {key!r} must be a non-empty list of strings, got {value!r}")
    return out


def ident(item: Any, key: str) -> str:
    """A required id field (string or integer) as a string."""
    value = field_of(item, key)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise ValueError(f"field {key!r} must be an id (string or integer), got {value!r}")
    return str(value)


def image_extension(data: bytes, key: str = "image") -> str:
    """The file extension of an image's bytes (by their magic); ValueError naming the field otherwise."""
    for magic, ext in IMAGE_MAGIC.items():
        if data.startswith(magic):
            return ext
    raise ValueError(f"field {key!r} is not a PNG, JPEG, GIF or WebP image")
