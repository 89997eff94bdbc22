"""`SharedFs`: stores that share one filesystem (the operator's, one per run) read and write
through one S3 client, renewed on the same schedule as a store's own."""

from __future__ import annotations

import threading

import pytest

from sphinxx.operator import checkpoints
from sphinxx.storage import CheckpointStore, StorageOptions
from sphinxx.storage.shared_fs import SharedFs


def test_stores_given_one_shared_fs_use_one_client_on_real_s3(s3_server, s3_bucket) -> None:
    options = StorageOptions(endpoint_url=s3_server.endpoint_url)
    shared = SharedFs(f"s3://{s3_bucket}/runs", options)
    a = CheckpointStore(f"s3://{s3_bucket}/runs", "a", shared=shared)
    b = CheckpointStore(f"s3://{s3_bucket}/other", "b", shared=shared)
    assert a.fs() is b.fs() and a.options is options
    a.write_progress(b'{"step": 1}')
    b.write_progress(b'{"step": 2}')
    assert (a.read_progress(), b.read_progress()) == (b'{"step": 1}', b'{"step": 2}')
    # A store alone still builds its own.
    assert CheckpointStore(f"s3://{s3_bucket}/runs", "c", options=options).fs() is not a.fs()


def test_a_shared_fs_is_renewed_after_its_max_age_for_every_store() -> None:
    shared = SharedFs("memory://renew", StorageOptions(fs_max_age_s=0))
    store = CheckpointStore("memory://renew/runs", "run", shared=shared)
    assert store.fs() is not store.fs()
    kept = SharedFs("memory://renew")
    assert CheckpointStore("memory://x/runs", "a", shared=kept).fs() is kept.get()


def test_threads_build_one_filesystem() -> None:
    shared, seen = SharedFs("memory://threads"), []
    threads = [threading.Thread(target=lambda: seen.append(shared.get())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(fs) for fs in seen}) == 1


def test_a_store_refuses_a_filesystem_of_another_scheme() -> None:
    with pytest.raises(ValueError, match="a memory:// filesystem cannot serve file://"):
        CheckpointStore("file:///tmp/runs", "a", shared=SharedFs("memory://x"))
    with pytest.raises(ValueError, match="not both"):
        CheckpointStore("memory://x/runs", "a", options=StorageOptions(), shared=SharedFs("memory://x"))


def test_the_operator_reads_every_run_through_one_filesystem_per_endpoint(s3_server, s3_bucket) -> None:
    prefix, other = f"s3://{s3_bucket}/sweeps", "http://127.0.0.1:9"
    runs = [checkpoints._store(prefix, f"run-{i}", s3_server.endpoint_url) for i in range(3)]
    assert len({id(store.fs()) for store in runs}) == 1
    assert checkpoints._store(prefix, "run-x", other).fs() is not runs[0].fs()
    runs[0].write_progress(b"{}")
    assert checkpoints.read_progress(prefix, "run-0", s3_server.endpoint_url)[0] == b"{}"
