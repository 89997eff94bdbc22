"""The multi-writer commit protocol on memory://, file:// and the moto S3 server."""

from __future__ import annotations

import threading
import time

import pytest

from sphinxx.storage import (
    CheckpointAlreadyCommittedError,
    CheckpointStore,
    IncompleteCheckpointError,
    TransferProgress,
)
from tests.storage.conftest import read_tree


def test_single_writer_round_trip(prefix, make_ckpt, tmp_path):
    local = make_ckpt({"model/w.bin": 3000, "optim/rank-0.pt": 1000, "extra/rng.json": 10})
    store = CheckpointStore(prefix, "run-1")
    assert store.latest() is None
    info = store.save(100, local, metadata={"world_size": 1, "metrics": {"loss": 1.5}, "config_hash": "abc"})
    assert info.step == 100 and info.uri.endswith("/run-1/checkpoints/step-000000100")
    latest = store.latest()
    assert latest is not None and latest.step == 100
    assert latest.manifest.metadata.metrics == {"loss": 1.5} and latest.manifest.metadata.world_size == 1
    out = str(tmp_path / "restored")
    store.download(None, out)
    restored = read_tree(out)
    manifest_copy = restored.pop("manifest.json")
    assert restored == read_tree(local)  # byte for byte what the trainer wrote
    assert b'"step": 100' in manifest_copy


def test_commit_waits_for_every_writer(prefix, make_ckpt):
    store = CheckpointStore(prefix, "run-2")
    store.save(10, make_ckpt({"a": 10}))
    with store.writer(20, rank=0, num_writers=2) as w0:
        w0.upload_dir(make_ckpt({"w.bin": 100}), dest="rank0")
    with pytest.raises(IncompleteCheckpointError, match=r"writers \[1\] of 2") as err:
        store.commit(20, num_writers=2)
    assert err.value.uri.endswith("step-000000020")
    assert store.latest().step == 10  # nothing half-done is visible
    with store.writer(20, rank=1, num_writers=2) as w1:
        w1.write_bytes("rank1/state.json", b"{}")
    info = store.commit(20, num_writers=2, metadata={"world_size": 2})
    assert {(f.path, f.rank) for f in info.manifest.files} == {("rank0/w.bin", 0), ("rank1/state.json", 1)}
    assert store.latest().step == 20 and info.manifest.num_writers == 2


def test_late_writer_is_rejected_and_cannot_change_the_commit(prefix, make_ckpt):
    store = CheckpointStore(prefix, "run-3")
    early = store.writer(5, rank=0, num_writers=2)  # opened before the commit, acts after it
    records = []
    for rank in range(2):
        with store.writer(5, rank=rank, num_writers=2) as w:
            w.write_bytes(f"r{rank}.bin", bytes([rank]) * 50)
        records.append(w.finish())
    store.commit(5, num_writers=2, writers=records)
    with pytest.raises(CheckpointAlreadyCommittedError, match="write-once"):
        store.writer(5, rank=1, num_writers=2)  # a third writer arriving late
    with pytest.raises(CheckpointAlreadyCommittedError):
        early.write_bytes("r0.bin", b"late overwrite")
    with pytest.raises(CheckpointAlreadyCommittedError):
        early.finish()
    with pytest.raises(CheckpointAlreadyCommittedError):
        store.commit(5, num_writers=2)
    assert store.verify(5).ok
    with pytest.raises(ValueError, match="outside"):
        store.writer(6, rank=2, num_writers=2)


def test_failure_mid_upload_leaves_no_commit_and_gc_removes_it(prefix, make_ckpt):
    store = CheckpointStore(prefix, "run-4")
    store.save(1, make_ckpt({"a": 10}))
    local = make_ckpt({f"shard-{i}.bin": 2000 for i in range(6)})

    def die_after_two_files(event: TransferProgress) -> None:
        if event.files_done >= 2:
            raise RuntimeError("writer killed")

    with pytest.raises(RuntimeError, match="writer killed"):
        with store.writer(2, progress=die_after_two_files) as w:
            w.upload_dir(local)
    with pytest.raises(IncompleteCheckpointError):
        store.commit(2)  # the dead writer never recorded itself
    assert store.latest().step == 1
    folders = {f.step: f for f in store.scan()}
    assert not folders[2].committed and folders[2].num_files >= 2
    assert [i.step for i in store.committed()] == [1]
    assert store.clean_partial(grace_s=3600) == ()  # young: a live writer could still be filling it
    assert store.clean_partial(grace_s=0) == (2,)
    assert [f.step for f in store.scan()] == [1]


def test_records_of_another_attempt_do_not_count(prefix):
    old = CheckpointStore(prefix, "run-5", attempt=0)
    with old.writer(7, rank=0, num_writers=2) as w:
        w.write_bytes("a", b"x")
    with old.writer(7, rank=1, num_writers=2) as w:
        w.write_bytes("b", b"y")
    new = CheckpointStore(prefix, "run-5", attempt=1)
    with new.writer(7, rank=0, num_writers=2) as w:
        w.write_bytes("a", b"x2")
    with pytest.raises(IncompleteCheckpointError, match=r"writers \[1\]"):
        new.commit(7, num_writers=2)
    assert new.prepare(7) is True  # rank 0 clears the dead attempt's folder before the barrier
    assert new.scan() == []


def test_prepare_refuses_a_committed_step(prefix):
    store = CheckpointStore(prefix, "run-6")
    with store.writer(3) as w:
        w.write_bytes("a", b"1")
    store.commit(3)
    with pytest.raises(CheckpointAlreadyCommittedError):
        store.prepare(3)
    assert store.prepare(4) is False


def test_commit_checks_objects_and_path_conflicts(prefix):
    store = CheckpointStore(prefix, "run-7")
    with store.writer(1) as w:
        w.write_bytes("model/a.bin", b"12345")
    store.fs().delete_file(store.layout.file(1, "model/a.bin"))
    with pytest.raises(IncompleteCheckpointError, match="model/a.bin is missing"):
        store.commit(1)
    for rank in range(2):
        with store.writer(2, rank=rank, num_writers=2) as w:
            w.write_bytes("same.bin", b"x")
    with pytest.raises(IncompleteCheckpointError, match="both wrote same.bin"):
        store.commit(2, num_writers=2)
    assert store.latest() is None


def test_commit_can_wait_for_a_slow_writer(make_ckpt):
    store = CheckpointStore("memory://wait-test/runs", "run-8")

    def slow_rank1() -> None:
        time.sleep(0.3)
        with store.writer(9, rank=1, num_writers=2) as w:
            w.write_bytes("b", b"y")

    with store.writer(9, rank=0, num_writers=2) as w:
        w.write_bytes("a", b"x")
    thread = threading.Thread(target=slow_rank1)
    thread.start()
    info = store.commit(9, num_writers=2, wait_s=10)
    thread.join()
    assert info.step == 9 and len(info.manifest.files) == 2


def test_metadata_is_validated():
    store = CheckpointStore("memory://meta-test/runs", "run-9")
    with store.writer(1) as w:
        w.write_bytes("a", b"x")
    with pytest.raises(ValueError, match="unknown checkpoint metadata"):
        store.commit(1, metadata={"worldsize": 2})
    with pytest.raises(ValueError, match="finite"):
        store.commit(1, metadata={"metrics": {"loss": float("nan")}})
    assert store.commit(1, metadata={"final": True, "extra": {"tokens": 123}}).manifest.metadata.final


def test_a_metric_may_be_a_record_of_numbers_and_strings():
    """The job's `benchmarks` metric is a record; it reads back as committed, and retention still
    ranks by numbers only."""
    store = CheckpointStore("memory://meta-record/runs", "run-1")
    record = {"vqav2": {"score": 0.5, "metric": "vqa_accuracy", "samples": 4, "details": {"accuracy": 50.0}}}
    with store.writer(1) as w:
        w.write_bytes("a", b"x")
    with pytest.raises(ValueError, match=r"'benchmarks.vqav2.score' must be a finite number"):
        store.commit(
            1, metadata={"metrics": {"benchmarks": {"vqav2": {**record["vqav2"], "score": float("inf")}}}}
        )
    with pytest.raises(ValueError, match=r"'benchmarks.vqav2.details' must be a finite number or a string"):
        store.commit(1, metadata={"metrics": {"benchmarks": {"vqav2": {"details": [1.0]}}}})
    store.commit(1, metadata={"metrics": {"loss": 2.0, "benchmarks": record}})
    assert store.get(1).manifest.metrics["benchmarks"] == record
