"""Checkpoint on SIGTERM: two gloo workers (plain processes, CPU), checkpoints on the moto S3 server.

SIGTERM goes to one of the two workers in the middle of training, as a preemption or node drain
sends it to one pod: both finish the step in progress, agree, commit a checkpoint of that step
within the grace period and exit, and the retry resumes there without losing or repeating a
step. If the commit cannot finish in time (S3 stalls), nothing half-written becomes visible: the
previous checkpoint stays the latest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sphinxx.storage import CheckpointStore, StorageOptions
from tests.jobs.conftest import read_traces, tiny_config, wait_until
from tests.services.process import free_port
from tests.storage.fault_proxy import FaultProxy, Rule

WORKER = Path(__file__).with_name("_stop_worker.py")
PREEMPTED = 3  # _stop_worker.py's exit code for `Preempted`


class Group:
    """The two gloo workers of one attempt, each a process of its own."""

    def __init__(self, tmp: Path, name: str, raw: dict, mlflow_run_id: str, attempt: int, trace: Path):
        config = tmp / f"{name}-a{attempt}.json"
        config.write_text(json.dumps({"config": raw, "mlflow_run_id": mlflow_run_id}))
        env = {**os.environ, "SPHINXX_SAMPLE_TRACE": str(trace), "PYTHONUNBUFFERED": "1"}
        env.pop("SPHINXX_STOP_FILE", None)
        port = str(free_port())
        self.logs = [tmp / f"{name}-a{attempt}-rank{rank}.log" for rank in (0, 1)]
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(WORKER), str(rank), "2", port, str(config), str(attempt)],
                stdout=open(log, "w"),  # noqa: SIM115 - closed with the process
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            for rank, log in zip((0, 1), self.logs, strict=True)
        ]

    def wait(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            return [p.wait(max(1.0, deadline - time.monotonic())) for p in self.procs]
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"workers still running after {timeout:.0f}s:\n{self.tail()}") from None

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(30)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(f"--- {log.name}\n"
                         + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
                         for log in self.logs)  # fmt: skip

    def result(self, rank: int) -> dict:
        for line in reversed(self.logs[rank].read_text(errors="replace").splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise AssertionError(f"rank {rank} printed no result:\n{self.tail()}")


def _traced(trace: Path, rank: int) -> int:
    """The newest step index `rank` has finished (-1 before the first)."""
    return max((r["step"] for r in read_traces(trace) if r["rank"] == rank), default=-1)


@pytest.mark.slow
def test_sigterm_mid_step_commits_that_step_and_the_retry_loses_none(
    tmp_path, synth, s3_bucket, mlflow_server
):
    from sphinxx.jobs.tracking import create_run

    # 30 steps (one epoch of the 140-record set is 35): on an idle machine a step takes ~0.1 s, and
    # 12 steps were over before the signal (sent after a 0.5 s poll saw step 3) could stop them.
    storage, steps = f"s3://{s3_bucket}/runs", 30
    # checkpoint_interval 100: without a stop, only the final step commits; any earlier commit is the stop's.
    raw = tiny_config(
        synth, "stop", storage, mlflow_server.tracking_uri, train={"steps": steps, "checkpoint_interval": 100}
    )
    run = create_run(mlflow_server.tracking_uri, "train-e2e", "stop")
    store = CheckpointStore(storage, "stop")
    first = Group(tmp_path, "stop", raw, run, 1, tmp_path / "trace-a")
    wait_until(lambda: _traced(tmp_path / "trace-a", 1) >= 2, 300, "step 3 on rank 1")
    at_signal = _traced(tmp_path / "trace-a", 1)
    os.kill(first.procs[1].pid, signal.SIGTERM)  # one worker only, as a drained node's pod
    sent = time.monotonic()
    assert first.wait(120) == [PREEMPTED, PREEMPTED], first.tail()
    assert time.monotonic() - sent < raw["train"].get("termination_grace_seconds", 120)

    # The step in progress finished on both ranks and is what committed.
    last = max(r["step"] for r in read_traces(tmp_path / "trace-a"))
    stopped = last + 1  # steps done
    assert stopped in (at_signal + 1, at_signal + 2) and stopped < steps, (at_signal, last)
    assert [c.step for c in store.committed()] == [stopped]
    assert {first.result(r)["preempted_at"] for r in (0, 1)} == {stopped}
    assert first.result(1)["why"] == "SIGTERM" and first.result(0)["why"] == "a peer was asked to stop"
    assert store.latest().manifest.metadata.world_size == 2 and not store.latest().manifest.metadata.final

    # The retry resumes there: every global batch trained exactly once over both attempts.
    second = Group(tmp_path, "stop", raw, run, 2, tmp_path / "trace-b")
    assert second.wait(600) == [0, 0], second.tail()
    before, after = read_traces(tmp_path / "trace-a"), read_traces(tmp_path / "trace-b")
    assert min(r["step"] for r in after) == stopped
    seen = [p for r in before + after for p in r["positions"]]
    assert len(seen) == len(set(seen)) == steps * 4
    assert store.latest().step == steps and store.latest().manifest.metadata.final


@pytest.mark.slow
def test_sigterm_during_a_commit_that_cannot_finish_leaves_the_previous_checkpoint_latest(
    tmp_path, synth, s3_server, s3_bucket, mlflow_server
):
    from sphinxx.jobs.preemption import EXIT_DEADLINE
    from sphinxx.jobs.tracking import create_run

    proxy = FaultProxy(s3_server.endpoint_url)  # the workers reach S3 only through it
    storage, grace = f"s3://{s3_bucket}/runs", 10
    raw = tiny_config(synth, "stall", storage, mlflow_server.tracking_uri,
                      train={"steps": 40, "checkpoint_interval": 2,
                             "termination_grace_seconds": grace})  # fmt: skip
    raw["storage"]["endpoint_url"] = proxy.endpoint_url
    run = create_run(mlflow_server.tracking_uri, "train-e2e", "stall")
    store = CheckpointStore(storage, "stall", options=StorageOptions(endpoint_url=s3_server.endpoint_url))
    group = Group(tmp_path, "stall", raw, run, 1, tmp_path / "trace")
    try:
        wait_until(lambda: store.latest() is not None, 300, "a first committed checkpoint")
        # From now on S3 holds every request about a checkpoint folder: no save can finish.
        proxy.add(Rule("stall", path=r"/checkpoints/step-", times=10**6, stall_s=120))
        time.sleep(0.5)  # a request already past the proxy may still land
        before = store.latest()
        os.kill(group.procs[1].pid, signal.SIGTERM)
        sent = time.monotonic()
        # The signalled rank must be gone within its grace period, wherever it was blocked (in the
        # commit's S3 calls, or in a collective waiting for its peer stuck there).
        try:
            code = group.procs[1].wait(grace + 30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"rank 1 outlived its grace period:\n{group.tail()}") from None
        took = time.monotonic() - sent
    finally:
        group.kill()  # rank 0 stays stuck on S3 until Ray Train (here: the test) ends the group
        proxy.close()
    assert code == EXIT_DEADLINE, group.tail()
    assert took < grace + 5, f"rank 1 exited {took:.0f} s after SIGTERM (grace {grace} s)"
    latest = store.latest()
    assert (
        before is not None and latest is not None and latest.step == before.step
    )  # the stop's commit never landed
    # Nothing after it is committed: a stalled commit left, at most, a partial folder.
    assert [f.step for f in store.scan() if f.manifest is not None and f.step > latest.step] == []
    assert "has not committed: exiting now" in group.tail()


def test_stop_signal_agreement_deadline_and_the_prestop_hook(tmp_path) -> None:
    """The parts without processes: one vote per step, the watchdog's deadline, the hook's files."""
    from sphinxx.jobs.preemption import EXIT_DEADLINE, MARGIN_S, VOTE_STOP, StopSignal, prestop

    now = [100.0]
    exits: list[int] = []
    stop = StopSignal(30, str(tmp_path / "stop"), clock=lambda: now[0], exit_fn=exits.append)
    assert not stop.requested and stop.remaining() == float("inf")
    assert stop.agreed(lambda mine: max(mine, 0.0)) is False
    # A peer's vote stops this rank too, and starts its own grace period.
    assert stop.agreed(lambda mine: VOTE_STOP) is True and stop.why == "a peer was asked to stop"
    assert stop.remaining() == 30 - MARGIN_S
    # The stop file (written by the pod's preStop hook) is a request too.
    stop_file = str(tmp_path / "stop")
    assert _timed(lambda: prestop(stop_file, wait_s=30, poll_s=0.05)) < 5  # no training process: at once
    (tmp_path / "stop.active.999999999").write_text("")  # a process that is gone counts for nothing
    assert _timed(lambda: prestop(stop_file, wait_s=30, poll_s=0.05)) < 5
    hooked = StopSignal(30, stop_file, clock=lambda: now[0], exit_fn=exits.append)
    hooked.announce()  # this process trains here: the hook waits for it...
    assert _timed(lambda: prestop(stop_file, wait_s=0.5, poll_s=0.05)) >= 0.5
    assert hooked.requested and hooked.why == f"stop file {tmp_path / 'stop'}"
    hooked.done()
    assert _timed(lambda: prestop(stop_file, wait_s=30, poll_s=0.05)) < 5  # ...until it is done
    # Past the deadline the watchdog ends the process.
    now[0] += 30
    deadline = time.monotonic() + 5
    while not exits and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exits[:1] == [EXIT_DEADLINE]


def _timed(fn) -> float:
    started = time.monotonic()
    assert fn() == 0
    return time.monotonic() - started
