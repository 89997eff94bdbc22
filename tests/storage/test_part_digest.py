"""A file uploaded in parts is recorded with its part-tree sha256: on a plain-HTTP S3 endpoint the
commit takes each part's SHA-256 from the request botocore signed (S3 checks it against the bytes
it receives) instead of reading the file again; restore and verify recompute the same kind.

hashlib is the reference throughout: the tree is the sha256 of the parts' sha256 digests.
"""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest

from sphinxx.storage import CheckpointCorruptError, CheckpointStore
from sphinxx.storage import transfer as transfer_mod
from sphinxx.storage.hashing import FileDigest, HashingFile, PartTreeDigest, part_tree_hexdigest
from sphinxx.storage.manifest import FileEntry, Manifest

MiB = 1 << 20


def _tree(data: bytes, part: int) -> str:
    """The reference: hashlib over each part, then over their concatenated digests."""
    digests = [hashlib.sha256(data[i : i + part]).digest() for i in range(0, len(data), part)]
    return hashlib.sha256(b"".join(digests)).hexdigest()


@pytest.mark.parametrize("size", [1, 999, 1000, 1001, 4321])
def test_the_part_tree_is_the_sha256_of_the_parts_sha256_digests(tmp_path, size):
    part = 1000
    data = os.urandom(size)
    expected = _tree(data, part)
    hasher, rng, pos = PartTreeDigest(part), random.Random(size), 0
    while pos < size:  # fed in arbitrary pieces that straddle the part boundaries
        step = rng.randint(1, 1500)
        hasher.update(data[pos : pos + step])
        pos += step
    assert hasher.hexdigest() == expected
    parts = [hashlib.sha256(data[i : i + part]).hexdigest() for i in range(0, size, part)]
    assert part_tree_hexdigest(parts) == expected
    path = tmp_path / "f"
    path.write_bytes(data)
    assert FileDigest("", part).of_file(str(path)) == expected
    assert FileDigest("").of_file(str(path)) == hashlib.sha256(data).hexdigest()
    # A download's ranged parts landing out of order: the stream gives the same tree.
    with HashingFile(str(tmp_path / "g"), PartTreeDigest(part)) as sink:
        for offset in sorted(range(0, size, 700), key=lambda o: -o):
            sink.seek(offset)
            sink.write(data[offset : offset + 700])
        assert sink.hexdigest() == expected


def test_entries_without_part_size_read_as_format_1_did():
    whole = FileEntry("a.bin", 3, hashlib.sha256(b"abc").hexdigest())
    tree = FileEntry("b.bin", 3, _tree(b"abc", 2), part_size=2)
    assert "part_size" not in whole.to_dict() and tree.to_dict()["part_size"] == 2
    manifest = Manifest("run", 1, 0, "c", 0.0, 1, (whole, tree))
    assert Manifest.from_json(manifest.to_json(), "m").files == (whole, tree)
    old = json.loads(manifest.to_json())  # what sphinxx wrote before part trees: format 1
    old["format_version"], old["files"] = 1, [whole.to_dict()]
    assert Manifest.from_json(json.dumps(old).encode(), "m").files == (whole,)


def _no_rereads(monkeypatch) -> list[str]:
    """Every file the upload hashes by reading it (beside the upload, or after it)."""
    read: list[str] = []
    real_beside, real_file = transfer_mod._hash_in_background, transfer_mod.sha256_file
    monkeypatch.setattr(transfer_mod, "_hash_in_background", lambda p: read.append(p) or real_beside(p))
    monkeypatch.setattr(transfer_mod, "sha256_file", lambda p: read.append(p) or real_file(p))
    return read


def test_a_commit_over_http_records_the_part_hashes_botocore_signed(
    s3_prefix, make_ckpt, tmp_path, monkeypatch
):
    local = make_ckpt({"model/big.bin": 20 * MiB, "small.json": 3000})
    store = CheckpointStore(s3_prefix, "run")
    assert store.fs().signs_payloads  # moto over http://
    read = _no_rereads(monkeypatch)
    store.save(1, local)
    assert read == []  # no file was read a second time to hash it
    entries = {e.path: e for e in store.get(1).manifest.files}
    big = open(f"{local}/model/big.bin", "rb").read()
    small = open(f"{local}/small.json", "rb").read()
    assert entries["model/big.bin"].part_size == 8 * MiB  # three parts: 8 + 8 + 4 MiB
    assert entries["model/big.bin"].sha256 == _tree(big, 8 * MiB)
    assert entries["small.json"].part_size is None  # one PutObject: the whole file's sha256
    assert entries["small.json"].sha256 == hashlib.sha256(small).hexdigest()
    assert store.verify(1).ok
    store.download(1, str(tmp_path / "restore"))
    assert (tmp_path / "restore" / "model" / "big.bin").read_bytes() == big

    # One flipped byte in the last part: verify and restore both catch it against the tree.
    uri = store.layout.file(1, "model/big.bin")
    corrupt = bytearray(big)
    corrupt[-5] ^= 0xFF
    store.fs().write_bytes(uri, bytes(corrupt))
    report = store.verify(1)
    assert [p.split(": ")[0] for p in report.problems] == [uri]
    with pytest.raises(CheckpointCorruptError, match="big.bin: sha256"):
        store.download(1, str(tmp_path / "again"))


def test_an_unsigned_payload_is_hashed_from_the_file(s3_server, s3_prefix, make_ckpt, monkeypatch):
    # A client that sends UNSIGNED-PAYLOAD (as botocore does over HTTPS) gives no part hashes:
    # the file is hashed by reading it, and the manifest records the whole file's sha256.
    import boto3
    from botocore.config import Config

    from sphinxx.storage.s3bulk import S3Bulk

    local = make_ckpt({"big.bin": 9 * MiB})
    store = CheckpointStore(s3_prefix, "run")
    fs = store.fs()
    unsigned = boto3.client(
        "s3", endpoint_url=s3_server.endpoint_url, config=Config(s3={"payload_signing_enabled": False})
    )
    fs._bulk = S3Bulk(unsigned, 4)
    read = _no_rereads(monkeypatch)
    store.save(1, local)
    assert len(read) == 1 and read[0].endswith("big.bin")
    (entry,) = store.get(1).manifest.files
    assert entry.part_size is None
    assert entry.sha256 == hashlib.sha256(open(f"{local}/big.bin", "rb").read()).hexdigest()
    assert store.verify(1).ok


def test_a_save_sends_no_request_it_does_not_need(s3_prefix, fault_proxy, make_ckpt):
    """The small requests of a single-writer save of a new step, in order: what the commit
    protocol needs (docs/storage.md, "Commit protocol") and nothing more: no HEAD in front of
    each GET, no HEAD + LIST after an empty listing."""
    from sphinxx.storage import StorageOptions

    local = make_ckpt({"w.bin": 20 * MiB, "meta.json": 100})
    store = CheckpointStore(s3_prefix, "run", options=StorageOptions(endpoint_url=fault_proxy.endpoint_url))
    store.latest()
    fault_proxy.clear()
    store.save(1, local)
    small = []
    for method, path, _ in fault_proxy.log:
        name = path.split("?")[0].rsplit("/", 1)[-1]
        if name not in ("w.bin", "meta.json"):  # the uploads themselves
            small.append(f"{method} {'LIST' if 'list-type=2' in path else name}")
    assert small == [
        "GET LIST",  # prepare: the step folder is empty, a new step
        "HEAD manifest.json",  # the writer refuses to start in a committed step
        "HEAD manifest.json",  # ... to upload into one
        "HEAD manifest.json",  # ... to finish in one
        "PUT rank-00000.json",  # its writer record
        "HEAD manifest.json",  # commit: not committed yet
        "GET LIST",  # every recorded file is there with its size
        "PUT manifest.json",  # create-once
        "GET manifest.json",  # read back: ours
        "HEAD latest.json",  # the pointer's ETag, for a compare-and-swap
        "GET latest.json",  # it never moves backwards
        "PUT latest.json",
    ]


@pytest.mark.parametrize(
    ("endpoint", "signed"),
    [
        ("http://minio.storage:9000", True),
        ("HTTP://10.0.0.5:9000", True),
        ("https://minio.example", False),
        (None, False),
    ],
)
def test_only_plain_http_endpoints_are_expected_to_sign_payloads(endpoint, signed, monkeypatch):
    """Over HTTPS (and on AWS itself, no endpoint) botocore sends UNSIGNED-PAYLOAD, so the commit
    hashes the file beside the upload from the start instead of waiting for part hashes."""
    from sphinxx.storage import StorageOptions
    from sphinxx.storage.objectfs import open_fs

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    assert open_fs("s3://bucket/run", StorageOptions(endpoint_url=endpoint)).signs_payloads is signed
    assert not open_fs("file:///tmp/run").signs_payloads


@pytest.mark.slow  # its own moto server
def test_the_storage_benchmark_runs_and_reports_both_ratios() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    argv = [
        sys.executable,
        str(root / "bench" / "storage.py"),
        "--size-mib",
        "16",
        "--repeats",
        "1",
        "--warmup",
        "0",
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    summaries = {r["op"]: r for r in rows if r.get("summary")}
    assert set(summaries) == {"commit", "restore"}
    for summary in summaries.values():
        assert summary["ratio_sphinxx_over_raw_parallel"] > 0 and summary["paired_ratio_median"] > 0
        assert summary["goal_met"] == (summary["paired_ratio_median"] <= 1.1)
    timed = [r for r in rows if r.get("impl")]
    assert {r["impl"] for r in timed} == {"sphinxx", "raw-parallel", "boto3-sequential"}
