"""SIGTERM with an asynchronous checkpoint in flight: two gloo workers (plain processes, CPU) on the
moto S3 server behind a proxy that holds the in-flight save's uploads until the test lets them go.

The stop's save drains the save in flight first (the log says how long it waited), then commits
the stop's step, all within the grace period: both checkpoints land, in order, and the workers
exit as preempted.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from sphinxx.storage import CheckpointStore, StorageOptions
from tests.jobs.conftest import tiny_config, wait_until
from tests.jobs.test_stop import PREEMPTED, Group, _traced
from tests.storage.fault_proxy import FaultProxy, Rule


@pytest.mark.slow
def test_sigterm_with_a_save_in_flight_drains_it_then_commits_the_stop_within_the_grace_period(
    tmp_path, synth, s3_server, s3_bucket
):
    proxy = FaultProxy(s3_server.endpoint_url)
    store_answers = threading.Event()
    proxy.add(
        Rule("delay", method="PUT", path=r"/astop/checkpoints/step-000000004/", times=100, stall_s=120,
             release=store_answers)
    )  # fmt: skip
    storage, grace = f"s3://{s3_bucket}/runs", 60
    train = {"steps": 30, "checkpoint_interval": 4, "termination_grace_seconds": grace}
    raw = tiny_config(synth, "astop", storage, "unused", train=train)
    raw["tracking"] = {"enabled": False}
    raw["storage"]["endpoint_url"] = proxy.endpoint_url
    store = CheckpointStore(storage, "astop", options=StorageOptions(endpoint_url=s3_server.endpoint_url))
    trace = tmp_path / "trace"
    group = Group(tmp_path, "astop", raw, None, 1, trace)
    try:
        # Step 4's save is in flight (held) and training went on past it.
        wait_until(lambda: _traced(trace, 1) >= 5, 300, "step 6 on rank 1")
        assert store.latest() is None
        os.kill(group.procs[1].pid, signal.SIGTERM)
        sent = time.monotonic()
        time.sleep(2.0)
        store_answers.set()  # the store answers again: step 4 can commit, then the stop's step
        codes = group.wait(grace + 30)
        took = time.monotonic() - sent
    finally:
        store_answers.set()
        group.kill()
        proxy.close()
    assert codes == [PREEMPTED, PREEMPTED], group.tail()
    assert took < grace, took
    stopped = group.result(0)["preempted_at"]
    assert group.result(1)["preempted_at"] == stopped and stopped > 4
    committed = [c.step for c in store.committed()]
    assert 4 in committed and committed[-1] == stopped, committed
    assert store.latest().step == stopped and not store.latest().manifest.metadata.final
    assert "for the checkpoint of step 4 to commit" in group.logs[0].read_text(), group.tail()
