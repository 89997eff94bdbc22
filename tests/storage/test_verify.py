"""verify(): sizes and sha256 against the manifest; every failure names its file."""

from __future__ import annotations

import hashlib

import pytest

from sphinxx.storage import CheckpointCorruptError, CheckpointStore


@pytest.fixture
def committed(prefix, make_ckpt):
    store = CheckpointStore(prefix, "run")
    local = make_ckpt({"model/w.bin": 4096, "optim/o.bin": 1024, "extra/rng.json": 64})
    store.save(100, local)
    return store, local


def test_intact_checkpoint_verifies(committed):
    store, local = committed
    report = store.verify(100)
    assert report.ok and report.checksums and report.files_checked == 3
    # The manifest's digests are those of the files the trainer wrote (hashlib as the reference).
    with open(f"{local}/model/w.bin", "rb") as f:
        expected = hashlib.sha256(f.read()).hexdigest()
    assert {e.path: e.sha256 for e in report_manifest(store)}["model/w.bin"] == expected


def report_manifest(store):
    return store.get(100).manifest.files


def test_flipped_byte_fails_checksum_and_names_the_file(committed):
    store, local = committed
    fs = store.fs()
    uri = store.layout.file(100, "optim/o.bin")
    data = bytearray(fs.read_bytes(uri))
    data[512] ^= 0xFF  # same size: only the checksum can tell
    fs.write_bytes(uri, bytes(data))
    assert store.verify(100, checksums=False).ok
    report = store.verify(100)
    assert not report.ok and len(report.problems) == 1
    assert report.problems[0].startswith(uri + ": sha256")
    with pytest.raises(CheckpointCorruptError, match="optim/o.bin") as err:
        report.raise_for_problems()
    assert err.value.uri == store.layout.step_dir(100)
    with pytest.raises(CheckpointCorruptError, match="sha256"):
        store.download(100, local + "-restore")


def test_truncated_and_missing_files_are_named(committed):
    store, _ = committed
    fs = store.fs()
    fs.write_bytes(store.layout.file(100, "model/w.bin"), b"short")
    fs.delete_file(store.layout.file(100, "extra/rng.json"))
    problems = store.verify(100).problems
    assert problems == tuple(
        sorted(
            [
                store.layout.file(100, "extra/rng.json") + ": missing",
                store.layout.file(100, "model/w.bin") + ": size 5, manifest says 4096",
            ]
        )
    )
