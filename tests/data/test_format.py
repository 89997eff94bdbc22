"""Source format: manifests, line indexes, record parsing, indexing shards made by other tools."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from sphinxx.jobs.data.format import (
    BadRecordError,
    Manifest,
    decode_index,
    index_source,
    parse_record,
    read_manifest,
    record_to_json,
)


def test_record_round_trip_and_role_aliases() -> None:
    line = record_to_json([("q1", "a1"), ("q2", "a2")], ["images/x.png"], "r1", [(10, 20)])
    record = parse_record(line.encode(), "here")
    assert (record.id, record.images, record.turns, record.image_sizes) == (
        "r1",
        ["images/x.png"],
        [("q1", "a1"), ("q2", "a2")],
        [(10, 20)],
    )
    llava = {
        "image": "a.jpg",
        "conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}],
    }
    assert parse_record(json.dumps(llava).encode(), "x").images == ["a.jpg"]


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[1, 2]", "invalid_record"),
        (b'{"conversations": []}', "invalid_record"),
        (
            b'{"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}',
            "invalid_record",
        ),
        (b'{"conversations": [{"from": "human", "value": "q"}]}', "invalid_record"),
        (
            b'{"images": ["a", "b"], "conversations": [{"from": "human", "value": "q"}, '
            b'{"from": "gpt", "value": "a"}]}',
            "invalid_record",
        ),
    ],
)
def test_bad_lines_raise_bad_record_with_kind_and_location(line: bytes, kind: str) -> None:
    with pytest.raises(BadRecordError) as err:
        parse_record(line, "s3://b/src/shards/00000.jsonl:7")
    assert err.value.kind == kind and err.value.location == "s3://b/src/shards/00000.jsonl:7"


def test_index_existing_shards(tmp_path: Path) -> None:
    root = tmp_path / "src"
    (root / "shards").mkdir(parents=True)
    lines = [record_to_json([(f"q{i}", f"a{i}")], ["images/i.png"] if i % 3 == 0 else []) for i in range(10)]
    lines[4] = "{broken"
    (root / "shards" / "b.jsonl").write_text("\n".join(lines[5:]))  # no final newline
    (root / "shards" / "a.jsonl").write_text("\n".join(lines[:5]) + "\n")
    manifest, invalid = index_source(str(root), "src", "vision")
    assert invalid == 1
    assert [s.path for s in manifest.shards] == ["shards/a.jsonl", "shards/b.jsonl"]
    assert manifest.num_records == 10 and manifest.num_images == 4  # records 0, 3, 6, 9
    for shard in manifest.shards:
        data = (root / shard.path).read_bytes()
        assert shard.sha256 == hashlib.sha256(data).hexdigest() and shard.bytes == len(data)
        offsets = decode_index((root / shard.index).read_bytes())
        pieces = [data[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        assert [p.rstrip(b"\n") for p in pieces] == data.rstrip(b"\n").split(b"\n")
    assert read_manifest(str(root)) == manifest


def test_manifest_checks_and_forward_compatibility(tmp_path: Path) -> None:
    m = Manifest("s", "ocr", 3, ())
    with pytest.raises(ValueError, match="num_records"):
        Manifest.from_json(m.to_json(), "m.json")
    data = json.loads(Manifest("s", "ocr", 0, ()).to_json())
    data["created_by"] = "someone else's converter"
    assert Manifest.from_json(json.dumps(data), "m.json").name == "s"
    with pytest.raises(ValueError, match="no manifest.json"):
        read_manifest(str(tmp_path))
    assert np.array_equal(decode_index(b""), np.zeros(0))
