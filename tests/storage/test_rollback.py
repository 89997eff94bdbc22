"""Rollback: newer commits stop counting without being deleted; a new commit of their step archives them."""

from __future__ import annotations

import json

import pytest

from sphinxx.storage import CheckpointNotFoundError, CheckpointStore, RetentionPolicy
from sphinxx.storage.rollback import RollbackLog, plan_rollback


def _commit(store: CheckpointStore, step: int, data: bytes = b"payload") -> str:
    with store.writer(step) as w:
        w.write_bytes("model/w.bin", data)
    return store.commit(step).manifest.commit_id


def test_rollback_marks_newer_commits_and_latest_skips_them(prefix):
    store = CheckpointStore(prefix, "run")
    ids = {step: _commit(store, step, f"v{step}".encode()) for step in (10, 20, 30, 40)}
    record = store.rollback(20, reason="diverged")
    assert (record.id, record.to_step, record.step_numbers, record.reason) == (1, 20, (30, 40), "diverged")
    assert store.latest().step == 20
    assert [c.step for c in store.committed()] == [10, 20]
    # Nothing was deleted: the manifests and files are where they were, shown as rolled back.
    rows = {f.step: (f.manifest is not None, f.rolled_back, f.committed) for f in store.scan()}
    assert rows == {
        10: (True, False, True),
        20: (True, False, True),
        30: (True, True, False),
        40: (True, True, False),
    }
    assert store.fs().read_bytes(store.layout.file(40, "model/w.bin")) == b"v40"
    assert json.loads(store.fs().read_bytes(store.layout.latest))["step"] == 20
    # The log is keyed by (step, commit id) and says where to roll back to.
    log = store.rollbacks()
    assert set(log.marked()) == {(30, ids[30]), (40, ids[40])}
    assert log.rollbacks[0].to_commit_id == ids[20]
    # Retention neither keeps nor deletes them: they are not part of the run's history any more.
    plan = store.apply_retention(RetentionPolicy(keep_last=2, keep_best=0))
    assert set(plan.keep) == {10, 20} and plan.delete == ()
    # Rolled-back folders have manifests: cleanup of partial folders leaves them alone.
    assert store.clean_partial(grace_s=0) == ()


def test_recommitting_a_rolled_back_step_archives_the_old_one(prefix):
    store = CheckpointStore(prefix, "run", attempt=1)
    _commit(store, 10)
    old = _commit(store, 20, b"old-20")
    store.rollback(10)
    resumed = CheckpointStore(prefix, "run", attempt=2)
    resumed.prepare(20)  # what rank 0 runs before writing step 20 again
    new = _commit(resumed, 20, b"new-20")
    assert resumed.latest().step == 20 and resumed.latest().manifest.commit_id == new != old
    assert [c.step for c in resumed.committed()] == [10, 20]
    # The rolled-back commit lives on, whole, in the archive the log names.
    (entry,) = resumed.rollbacks().rollbacks[0].steps
    assert entry.archive == resumed.layout.archive_dir(20, old)
    fs = resumed.fs()
    assert fs.read_bytes(f"{entry.archive}/model/w.bin") == b"old-20"
    assert json.loads(fs.read_bytes(f"{entry.archive}/manifest.json"))["commit_id"] == old
    assert fs.read_bytes(resumed.layout.file(20, "model/w.bin")) == b"new-20"
    # prepare of a step with no rolled-back commit changes nothing.
    assert resumed.prepare(30) is False


def test_rollback_twice_and_refusals(prefix):
    store = CheckpointStore(prefix, "run")
    for step in (10, 20, 30):
        _commit(store, step)
    with pytest.raises(CheckpointNotFoundError, match="step 15 is not a committed checkpoint"):
        store.rollback(15)
    with pytest.raises(ValueError, match="nothing to roll back"):
        store.rollback(30)
    store.rollback(20)
    with pytest.raises(CheckpointNotFoundError):
        store.rollback(30)  # rolled back: not a step one can resume from
    second = store.rollback(10)
    assert (second.id, second.step_numbers) == (2, (20,))
    assert store.latest().step == 10
    # A damaged target is refused before anything is marked.
    store2 = CheckpointStore(prefix, "run2")
    _commit(store2, 10)
    _commit(store2, 20)
    store2.fs().write_bytes(store2.layout.file(10, "model/w.bin"), b"x")
    with pytest.raises(Exception, match="cannot roll back"):
        store2.rollback(10)
    assert store2.rollbacks().rollbacks == ()


def test_plan_rollback_is_pure_and_the_log_round_trips():
    from sphinxx.storage import Manifest

    def manifest(step: int) -> Manifest:
        return Manifest("r", step, 1, f"c{step}", 0.0, 1, ())

    log = plan_rollback([manifest(s) for s in (5, 10, 15)], RollbackLog(), 5, "why", now=1.0)
    assert RollbackLog.from_json(log.to_json(), "x") == log
    assert log.is_rolled_back(manifest(10)) and not log.is_rolled_back(manifest(5))
    assert not log.is_rolled_back(Manifest("r", 10, 2, "other", 0.0, 1, ()))  # a new commit of step 10
