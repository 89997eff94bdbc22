"""A writer process killed mid-upload: nothing committed, latest() unchanged, gc removes the debris."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from sphinxx.storage import CheckpointStore


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["file", "s3"])
def test_killed_writer_leaves_no_commit(backend, request, tmp_path, make_ckpt):
    if backend == "s3":
        prefix = f"s3://{request.getfixturevalue('s3_bucket')}/runs"  # the child inherits AWS_ENDPOINT_URL
    else:
        prefix = "file://" + str(tmp_path / "store")
    store = CheckpointStore(prefix, "run")
    store.save(100, make_ckpt({"w.bin": 10}))
    local = make_ckpt({f"shard-{i:02d}.bin": 1000 for i in range(8)})
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.storage.crash_writer", prefix, "run", "200", local],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    uploaded = []
    try:
        for line in child.stdout:
            uploaded.append(line)
            if len(uploaded) == 3:
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(30)
    assert len(uploaded) == 3, child.stderr.read()
    assert child.returncode == -signal.SIGKILL
    assert store.latest().step == 100
    assert [c.step for c in store.committed()] == [100]
    partial = [f for f in store.scan() if not f.committed]
    assert [f.step for f in partial] == [200] and 3 <= partial[0].num_files < 8
    assert store.clean_partial(grace_s=0) == (200,)
    assert [f.step for f in store.scan()] == [100] and store.verify(100).ok
