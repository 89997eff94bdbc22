"""S3 faults through a real HTTP proxy in front of moto: retried when transient, named when permanent,
and never a checkpoint reported committed that is not."""

from __future__ import annotations

import pytest

from sphinxx.storage import (
    CheckpointAlreadyCommittedError,
    CheckpointStore,
    StorageAccessError,
    StorageOptions,
)
from tests.storage.fault_proxy import Rule

MiB = 1 << 20


def _store(s3_prefix, proxy, **kw) -> CheckpointStore:
    options = StorageOptions(endpoint_url=proxy.endpoint_url, read_timeout_s=1.0, connect_timeout_s=1.0, **kw)
    return CheckpointStore(s3_prefix, "run", options=options)


def test_transient_errors_and_a_timeout_are_retried(s3_prefix, fault_proxy, make_ckpt):
    store = _store(s3_prefix, fault_proxy)
    local = make_ckpt({"model/w.bin": 17 * MiB, "extra/rng.json": 100})
    rules = [
        fault_proxy.add(
            Rule(
                "error", method="PUT", path=r"w\.bin\?.*partNumber=2\b", times=2, status=503, code="SlowDown"
            )
        ),
        fault_proxy.add(Rule("error", method="PUT", path=r"rng\.json", status=500, code="InternalError")),
        fault_proxy.add(Rule("stall", method="PUT", path=r"_writers/", stall_s=2.5)),  # read timeout is 1 s
        fault_proxy.add(Rule("error", method="GET", path=r"list-type=2", status=503, code="SlowDown")),
    ]
    info = store.save(10, local)
    assert [r.hits for r in rules] == [2, 1, 1, 1]  # every fault was injected, and survived
    assert store.latest().step == info.step == 10
    assert store.verify(10).ok


def test_lost_response_to_the_manifest_put_is_recognised(s3_prefix, fault_proxy):
    """The PUT landed but its answer was lost: the retry hits If-None-Match, and the manifest is ours."""
    store = _store(s3_prefix, fault_proxy)
    with store.writer(5) as w:
        w.write_bytes("a.bin", b"x")
    rule = fault_proxy.add(Rule("lose_response", method="PUT", path=r"manifest\.json"))
    info = store.commit(5)
    assert rule.hits == 1
    puts = [p for m, p, _ in fault_proxy.log if m == "PUT" and p.endswith("manifest.json")]
    assert len(puts) == 2  # the original and botocore's retry
    assert store.get(5).manifest.commit_id == info.manifest.commit_id


def test_permanent_error_names_the_uri_and_commits_nothing(s3_prefix, fault_proxy, make_ckpt):
    store = _store(s3_prefix, fault_proxy)
    store.save(1, make_ckpt({"w.bin": 100}))
    fault_proxy.add(
        Rule("error", method="PUT", path="step-000000002/model", times=100, status=403, code="AccessDenied")
    )
    with pytest.raises(StorageAccessError, match="permanent error: PermissionError") as err:
        store.save(2, make_ckpt({"model/w.bin": 100, "extra.json": 10}))
    assert err.value.uri == store.layout.file(2, "model/w.bin")
    assert "step-000000002/model/w.bin" in str(err.value)
    assert store.latest().step == 1 and [c.step for c in store.committed()] == [1]


def test_failed_manifest_put_reports_nothing_committed(s3_prefix, fault_proxy):
    store = _store(s3_prefix, fault_proxy, max_attempts=3)
    with store.writer(3) as w:
        w.write_bytes("a.bin", b"x")
    rule = fault_proxy.add(
        Rule("error", method="PUT", path=r"manifest\.json", times=100, status=503, code="SlowDown")
    )
    with pytest.raises(StorageAccessError, match="manifest.json") as err:
        store.commit(3)
    assert rule.hits == 3  # max_attempts, then a clear error
    assert err.value.uri == store.layout.manifest(3)
    fault_proxy.clear()
    assert store.latest() is None and store.committed() == []
    assert store.commit(3).step == 3  # the next try at the same step succeeds


@pytest.mark.parametrize("store_behaviour", ["rejects", "ignores"])
def test_commit_is_correct_without_conditional_writes(s3_prefix, fault_proxy, store_behaviour):
    """A store that answers 501 to If-None-Match, or silently ignores it: commits stay write-once."""
    store = _store(s3_prefix, fault_proxy)
    if store_behaviour == "rejects":
        rule = Rule("error", header="If-None-Match", times=100, status=501, code="NotImplemented")
    else:
        rule = Rule("strip_header", header="If-None-Match", times=100)
    fault_proxy.add(rule)
    for rank in range(2):
        with store.writer(7, rank=rank, num_writers=2) as w:
            w.write_bytes(f"r{rank}", b"x")
    info = store.commit(7, num_writers=2)
    assert rule.hits >= 1
    with pytest.raises(CheckpointAlreadyCommittedError):
        store.commit(7, num_writers=2)
    assert store.get(7).manifest.commit_id == info.manifest.commit_id


def test_conditional_write_is_create_once_on_moto(s3_prefix):
    """moto 5.2.5 + s3fs: If-None-Match: * really refuses an existing key (and latest.json uses If-Match)."""
    store = CheckpointStore(s3_prefix, "run")
    fs = store.fs()
    uri = store.layout.manifest(1)
    fs.write_bytes(uri, b"first", create_only=True)
    with pytest.raises(FileExistsError):
        fs.write_bytes(uri, b"second", create_only=True)
    assert fs.read_bytes(uri) == b"first"
    from sphinxx.storage.errors import PreconditionFailedError

    etag = fs.etag(uri)
    fs.write_bytes(uri, b"third", if_match=etag)
    with pytest.raises(PreconditionFailedError):
        fs.write_bytes(uri, b"fourth", if_match=etag)  # stale ETag: someone changed it meanwhile
    assert fs.read_bytes(uri) == b"third"


def test_missing_bucket_is_a_clear_error(s3_server, s3_env, make_ckpt):
    store = CheckpointStore("s3://no-such-bucket-here/runs", "run")
    with pytest.raises(StorageAccessError, match="no-such-bucket-here.*bucket does not exist"):
        store.save(1, make_ckpt({"a": 1}))
    assert store.latest() is None
