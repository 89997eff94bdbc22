"""Reading: latest() is the newest committed checkpoint that checks out; the pointer is only a hint."""

from __future__ import annotations

import json

import pytest

from sphinxx.storage import CheckpointCorruptError, CheckpointNotFoundError, CheckpointStore


def _commit(store: CheckpointStore, step: int, data: bytes = b"payload") -> None:
    with store.writer(step) as w:
        w.write_bytes("model/w.bin", data)
    store.commit(step)


def test_latest_ignores_newer_partial_folders(prefix):
    store = CheckpointStore(prefix, "run")
    _commit(store, 10)
    with store.writer(20) as w:  # finished writer, never committed
        w.write_bytes("model/w.bin", b"half")
    with store.writer(30, rank=0, num_writers=2) as w:
        w.write_bytes("x", b"y")
    assert store.latest().step == 10
    assert [c.step for c in store.committed()] == [10]
    assert [(f.step, f.committed) for f in store.scan()] == [(10, True), (20, False), (30, False)]


def test_stale_or_missing_pointer_does_not_hide_a_newer_commit(prefix):
    store = CheckpointStore(prefix, "run")
    _commit(store, 10)
    _commit(store, 20)
    fs = store.fs()
    pointer = json.loads(fs.read_bytes(store.layout.latest))
    assert pointer["step"] == 20 and pointer["path"] == "checkpoints/step-000000020"
    # A commit that died between its manifest and the pointer leaves the pointer behind.
    fs.write_bytes(
        store.layout.latest, json.dumps({"step": 10, "path": "checkpoints/step-000000010"}).encode()
    )
    assert store.latest().step == 20
    fs.delete_file(store.layout.latest)
    assert store.latest().step == 20
    fs.write_bytes(store.layout.latest, b"not json")
    assert store.latest().step == 20


def test_pointer_to_a_damaged_checkpoint_falls_back(prefix):
    store = CheckpointStore(prefix, "run")
    _commit(store, 10)
    _commit(store, 20)
    fs = store.fs()
    fs.write_bytes(store.layout.file(20, "model/w.bin"), b"truncated")  # size no longer matches
    assert store.latest().step == 10
    assert store.latest(check_sizes=False).step == 20
    fs.delete_file(store.layout.file(10, "model/w.bin"))
    assert store.latest() is None
    fs.write_bytes(store.layout.manifest(20), b"{torn")  # unreadable manifest: skipped, not fatal
    assert store.latest(check_sizes=False).step == 10


def test_pointer_never_moves_backwards(prefix):
    store = CheckpointStore(prefix, "run")
    _commit(store, 20)
    _commit(store, 10)  # e.g. a re-run of an older interval
    assert json.loads(store.fs().read_bytes(store.layout.latest))["step"] == 20
    assert store.latest().step == 20


def test_get_and_missing_steps(prefix):
    store = CheckpointStore(prefix, "run")
    _commit(store, 5)
    assert store.get(5).manifest.files[0].path == "model/w.bin"
    with pytest.raises(CheckpointNotFoundError, match="step-000000006"):
        store.get(6)
    with pytest.raises(CheckpointNotFoundError, match="no committed checkpoint under"):
        CheckpointStore(prefix, "empty").download(None, "/tmp/never-used")


def test_download_filters_by_rank(prefix, tmp_path):
    store = CheckpointStore(prefix, "run")
    for rank in range(3):
        with store.writer(1, rank=rank, num_writers=3) as w:
            w.write_bytes(f"optim/rank-{rank}.pt", bytes([rank]) * 10)
            if rank == 0:
                w.write_bytes("model/full.bin", b"weights")
    store.commit(1, num_writers=3)
    out = tmp_path / "r1"
    store.download(1, str(out), ranks=[1])
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["manifest.json", "rank-1.pt"]
    out2 = tmp_path / "model"
    store.download(1, str(out2), select=lambda e: e.path.startswith("model/"))
    assert (out2 / "model" / "full.bin").read_bytes() == b"weights"


def test_run_config_and_run_manifest(prefix):
    store = CheckpointStore(prefix, "run", attempt=0)
    assert store.read_run_config() is None and store.read_run_manifest() is None
    digest = store.write_run_config("model: tiny\n")
    assert store.read_run_config() == "model: tiny\n"
    first = store.write_run_manifest(code_version="abc123")
    again = CheckpointStore(prefix, "run", attempt=2).write_run_manifest()
    assert again["config_hash"] == digest == first["config_hash"]
    assert again["attempts"] == [0, 2] and again["code_version"] == "abc123"
    assert again["created_at"] == first["created_at"]


@pytest.mark.parametrize("body", [b"[1, 2]", b"{not json", b"\xff"])
def test_a_run_manifest_that_is_not_a_json_object_is_corrupt_and_named(prefix, body):
    store = CheckpointStore(prefix, "run")
    store.fs().write_bytes(store.layout.run_manifest, body)
    for call in (store.read_run_manifest, store.write_run_manifest):
        with pytest.raises(CheckpointCorruptError) as caught:
            call()
        assert caught.value.uri == store.layout.run_manifest
