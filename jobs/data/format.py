"""The source format: what a data source looks like on disk or in a bucket, and the record schema.

Why a manifest and line indexes: the sampler draws records of a source in a global random order
(without replacement within an epoch), so a worker must fetch record i of a source without
scanning its shards. The manifest gives every shard's record count (enough for the data-fraction
hash and the sampler, without reading any shard), and each shard's `.idx` file gives the byte
offset of every line, so one ranged GET fetches one record.

Layout of a source root (a local folder or an `s3://` prefix):

    manifest.json            {"format": "sphinxx.source/v1", "name", "domain", "num_records",
                              "num_images", "shards": [{"path", "num_records", "bytes", "sha256",
                              "index"}], "description"}
    shards/00000.jsonl       one conversation record per line (UTF-8 JSON)
    shards/00000.idx         num_records + 1 little-endian uint64 line start offsets (last = size)
    images/...               image files referenced by records (any layout)

A record (one JSONL line):

    {"id": "ocr-000017",                                  # optional, for logs
     "images": ["images/000017.png"],                     # optional; also "image": "..."
     "image_sizes": [[640, 160]],                         # optional [w, h], for `data inspect`
     "conversations": [{"from": "human", "value": "<image>\\nWhat does the sign say?"},
                       {"from": "gpt", "value": "OPEN 24 HOURS"}, ...]}

Roles: `human`/`user` ask, `gpt`/`assistant` answer; turns alternate, human first, assistant
last. Image references are relative to the source root or absolute URIs. The model takes one
image per sample, placed before the text (docs/model.md, "Sequence layout"), so a record with more
than one image is rejected as invalid; `<image>` markers in the text are dropped.

A record's identity for the data-fraction hash is its index in the source (shards in manifest
order, lines in file order), so re-sharding that keeps the order keeps every subset.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from sphinxx.schema.documents import load_json
from sphinxx.storage import uri as uri_mod
from sphinxx.storage.objectfs import ObjectFS, open_fs

FORMAT = "sphinxx.source/v1"
MANIFEST = "manifest.json"
# A manifest is read whole by every job and `data inspect`: ~200 bytes a shard, so 64 MiB is some
# 300,000 shards, past any real source, while a runaway file is refused before json parses it.
MANIFEST_MAX_BYTES = 64 * 2**20
HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")

# Kinds of bad records: counted, logged with their location and skipped by the loader.
MALFORMED_JSON = "malformed_json"
INVALID_RECORD = "invalid_record"
MISSING_IMAGE = "missing_image"
UNDECODABLE_IMAGE = "undecodable_image"
UNREADABLE_SHARD = "unreadable_shard"
BAD_KINDS = (MALFORMED_JSON, INVALID_RECORD, MISSING_IMAGE, UNDECODABLE_IMAGE, UNREADABLE_SHARD)


class BadRecordError(Exception):
    """A record that cannot be used; `location` is `shard-uri:line` (1-based) or an image URI."""

    def __init__(self, kind: str, location: str, detail: str):
        assert kind in BAD_KINDS, kind
        super().__init__(f"{kind} at {location}: {detail}")
        self.kind = kind
        self.location = location
        self.detail = detail

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return type(self), (self.kind, self.location, self.detail)  # crosses Ray: see Preempted


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the source root
    num_records: int
    bytes: int
    sha256: str
    index: str | None = None  # relative path of the line-offset index; None: built on first read


@dataclass(frozen=True)
class Manifest:
    name: str
    domain: str
    num_records: int
    shards: tuple[ShardInfo, ...]
    num_images: int = 0
    description: str = ""
    format: str = FORMAT

    def to_json(self) -> str:
        data = asdict(self)
        data["shards"] = [asdict(s) for s in self.shards]
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Manifest:
        data = load_json(text, where, max_bytes=MANIFEST_MAX_BYTES)  # the one safe reader: no duplicate keys
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
            shards = tuple(
                ShardInfo(**{k: v for k, v in s.items() if k in _SHARD_KEYS}) for s in data.pop("shards")
            )
            # Unknown top-level keys (provenance, licences...) are the writer's business: ignored.
            manifest = cls(shards=shards, **{k: v for k, v in data.items() if k in _MANIFEST_KEYS})
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(
                f"{where} is not a valid source manifest ({type(err).__name__}: {err}); "
                f"see sphinxx.jobs.data.format for the layout"
            ) from None
        if sum(s.num_records for s in shards) != manifest.num_records:
            raise ValueError(f"{where}: num_records {manifest.num_records} != sum over shards")
        return manifest


_SHARD_KEYS = {f.name for f in fields(ShardInfo)}
_MANIFEST_KEYS = {f.name for f in fields(Manifest)} - {"shards"}


def read_manifest(root: str, fs: ObjectFS | None = None) -> Manifest:
    root = uri_mod.normalize(root)
    where = uri_mod.join(root, MANIFEST)
    fs = fs or open_fs(root)
    try:
        text = fs.read_bytes(where)
    except FileNotFoundError:
        raise ValueError(f"data source {root} has no {MANIFEST}; is the URI the source root?") from None
    return Manifest.from_json(text, where)


def resolve_image(root: str, ref: str) -> str:
    """Image reference of a record -> URI (relative references are below the source root)."""
    if "://" in ref:
        return uri_mod.normalize(ref)
    return uri_mod.join(root, ref)


# ---------------------------------------------------------------------------- records


@dataclass
class Record:
    id: str
    images: list[str]  # references as written (relative or URIs); at most one
    turns: list[tuple[str, str]]  # (human, assistant) pairs, in order
    image_sizes: list[tuple[int, int]] = field(default_factory=list)


def parse_record(line: bytes, location: str) -> Record:
    """One JSONL line -> Record; BadRecordError(malformed_json | invalid_record) otherwise."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRecordError(MALFORMED_JSON, location, str(err)[:200]) from None
    try:
        return _record_from_dict(data, location)
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise BadRecordError(INVALID_RECORD, location, str(err)[:200]) from None


def _record_from_dict(data: Any, location: str) -> Record:
    if not isinstance(data, dict):
        raise ValueError(f"a record is a JSON object, got {type(data).__name__}")
    images = data.get("images", [])
    if "image" in data and data["image"] is not None:
        images = [data["image"]]
    if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
        raise ValueError("'images' must be a list of non-empty strings")
    if len(images) > 1:
        raise ValueError(f"{len(images)} images; the model takes at most one image per sample")
    convs = data["conversations"]
    if not isinstance(convs, list) or len(convs) < 2 or len(convs) % 2:
        raise ValueError("'conversations' must hold human/assistant pairs")
    turns = []
    for i in range(0, len(convs), 2):
        q, a = convs[i], convs[i + 1]
        if q["from"] not in HUMAN_ROLES or a["from"] not in ASSISTANT_ROLES:
            raise ValueError(
                f"turn {i // 2}: expected human then assistant, got {q['from']!r}, {a['from']!r}"
            )
        if not isinstance(q["value"], str) or not isinstance(a["value"], str):
            raise ValueError(f"turn {i // 2}: values must be strings")
        turns.append((q["value"], a["value"]))
    sizes = [(int(w), int(h)) for w, h in data.get("image_sizes", [])]
    return Record(id=str(data.get("id", location)), images=images, turns=turns, image_sizes=sizes)


def record_to_json(
    turns: Sequence[tuple[str, str]],
    images: Sequence[str] = (),
    id: str | None = None,
    image_sizes: Sequence[tuple[int, int]] = (),
) -> str:
    """The JSONL line of a record (the inverse of `parse_record`)."""
    data: dict[str, Any] = {}
    if id is not None:
        data["id"] = id
    if images:
        data["images"] = list(images)
    if image_sizes:
        data["image_sizes"] = [list(s) for s in image_sizes]
    data["conversations"] = [
        msg for q, a in turns for msg in ({"from": "human", "value": q}, {"from": "gpt", "value": a})
    ]
    return json.dumps(data, ensure_ascii=False)


# ---------------------------------------------------------------------------- line indexes


def line_offsets(data: bytes) -> np.ndarray:
    """Start offset of every line plus the end: [n + 1] uint64. A missing final newline is fine."""
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n")) + 1
    starts = np.concatenate([[0], ends]).astype(np.uint64)
    if len(data) and data[-1:] != b"\n":
        starts = np.concatenate([starts, [len(data)]]).astype(np.uint64)
    return starts


def encode_index(offsets: np.ndarray) -> bytes:
    return offsets.astype("<u8").tobytes()


def decode_index(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<u8").astype(np.int64)


# ---------------------------------------------------------------------------- writing


class SourceWriter:
    """Writes one source: shards of `records_per_shard` lines, their indexes, images, manifest.

    The manifest is written last, so a reader never sees a source whose shards are missing.
    `shards` and `num_images` continue a source whose first shards were written before (an
    interrupted import: `importer.py`).
    """

    def __init__(
        self,
        root: str,
        name: str,
        domain: str,
        records_per_shard: int = 256,
        description: str = "",
        shards: Sequence[ShardInfo] = (),
        num_images: int = 0,
    ):
        if records_per_shard < 1:
            raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
        self.root = uri_mod.normalize(root)
        self.fs = open_fs(self.root)
        self.name, self.domain, self.description = name, domain, description
        self.records_per_shard = records_per_shard
        self._lines: list[bytes] = []
        self._shards: list[ShardInfo] = list(shards)
        self._num_images = num_images

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        return tuple(self._shards)

    @property
    def num_images(self) -> int:
        return self._num_images

    def add(
        self, line: str, images: dict[str, bytes] | None = None, *, image_refs: int = 0
    ) -> ShardInfo | None:
        """Append one record line; `images` maps relative paths to file bytes; `image_refs` counts
        images the record references without this writer writing them. Returns the shard this line
        completed (written), if it did."""
        if "\n" in line:
            raise ValueError("a record line must not contain a newline (JSON-escape it)")
        for rel, data in (images or {}).items():
            self.fs.write_bytes(uri_mod.join(self.root, rel), data)
            self._num_images += 1
        self._num_images += image_refs
        self._lines.append(line.encode("utf-8") + b"\n")
        if len(self._lines) >= self.records_per_shard:
            return self._flush()
        return None

    def _flush(self) -> ShardInfo | None:
        if not self._lines:
            return None
        data = b"".join(self._lines)
        path, index = shard_paths(len(self._shards))
        self.fs.write_bytes(uri_mod.join(self.root, path), data)
        self.fs.write_bytes(uri_mod.join(self.root, index), encode_index(line_offsets(data)))
        digest = hashlib.sha256(data).hexdigest()
        shard = ShardInfo(path, len(self._lines), len(data), digest, index)
        self._shards.append(shard)
        self._lines = []
        return shard

    def close(self) -> Manifest:
        self._flush()
        manifest = Manifest(
            name=self.name,
            domain=self.domain,
            num_records=sum(s.num_records for s in self._shards),
            shards=tuple(self._shards),
            num_images=self._num_images,
            description=self.description,
        )
        self.fs.write_bytes(uri_mod.join(self.root, MANIFEST), manifest.to_json().encode())
        return manifest


def shard_paths(number: int) -> tuple[str, str]:
    """The JSONL and index paths of a `SourceWriter`'s shard `number` (relative to the root)."""
    return f"shards/{number:05d}.jsonl", f"shards/{number:05d}.idx"


def written_shard(root: str, number: int, fs: ObjectFS) -> ShardInfo:
    """The ShardInfo of shard `number` that a `SourceWriter` wrote at `root` (read back, to go on)."""
    path, index = shard_paths(number)
    data = fs.read_bytes(uri_mod.join(root, path))
    return ShardInfo(path, data.count(b"\n"), len(data), hashlib.sha256(data).hexdigest(), index)


def index_source(root: str, name: str, domain: str, pattern: str = "shards/*.jsonl") -> tuple[Manifest, int]:
    """Write `.idx` files and manifest.json for existing JSONL shards under `root`.

    For data converted by other tools: shards matching `pattern` (relative to root, in name order)
    are read once each. Returns the manifest and the number of lines that are not valid records
    (they stay in place and are counted as bad records at training time).
    """
    root = uri_mod.normalize(root)
    fs = open_fs(root)
    paths = sorted(p for p in fs.list_files(root) if fnmatch.fnmatch(p, pattern))
    if not paths:
        raise ValueError(f"no shards matching {pattern!r} under {root}")
    shards, images, invalid = [], 0, 0
    for path in paths:
        data = fs.read_bytes(uri_mod.join(root, path))
        offsets = line_offsets(data)
        for i in range(len(offsets) - 1):
            try:
                images += bool(parse_record(data[int(offsets[i]) : int(offsets[i + 1])], path).images)
            except BadRecordError:
                invalid += 1
        index = path.rsplit(".", 1)[0] + ".idx"
        fs.write_bytes(uri_mod.join(root, index), encode_index(offsets))
        shards.append(ShardInfo(path, len(offsets) - 1, len(data), hashlib.sha256(data).hexdigest(), index))
    manifest = Manifest(name, domain, sum(s.num_records for s in shards), tuple(shards), images)
    fs.write_bytes(uri_mod.join(root, MANIFEST), manifest.to_json().encode())
    return manifest, invalid
