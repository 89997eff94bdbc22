"""Asynchronous checkpoints: two gloo workers, checkpoints on the moto S3 server behind a proxy.

The proxy (tests/storage/fault_proxy.py) is how the upload becomes observably slow, fails, or is
still on the wire when the workers die: our code only ever sees an endpoint URL. What must hold:

- a save returns after the snapshot and training goes on (the step counter moves) while the
  upload and the commit run in the background; the checkpoint then restores bit-identically to
  one saved synchronously from the same state (same files, same bytes);
- a background commit that fails fails the run at the next step, naming the step and the cause,
  and the previous checkpoint stays the latest;
- workers killed during the background upload leave the previous checkpoint the latest.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from tests.jobs._dist import _entry, _free_port, run_distributed
from tests.jobs._tiny import GLOBAL_BATCH, MICRO, rank_group, tiny_run_config
from tests.jobs.checkpoint.test_checkpointer import _full_state
from tests.ranks import context, here
from tests.storage.fault_proxy import FaultProxy, Rule

CASE = ("debug", 2, 1)  # ZeRO-2: the optimizer state is written as fragments


def _setup(rank: int, world: int, storage: str, endpoint: str, run_id: str):
    from sphinxx.jobs.checkpoint import Checkpointer
    from sphinxx.jobs.context import Worker
    from sphinxx.storage import CheckpointStore, StorageOptions
    from tests.jobs._tiny import run_engine, run_model

    cfg = tiny_run_config(*CASE, storage)
    worker = Worker(rank=rank, world_size=world)
    model, _ = run_model(cfg, worker)
    engine, optimizer = run_engine(model, cfg, worker, GLOBAL_BATCH // (MICRO * world))

    def checkpointer(name: str) -> Checkpointer:
        store = CheckpointStore(storage, name, options=StorageOptions(endpoint_url=endpoint))
        return Checkpointer(store, model, optimizer, rank, world)

    return worker, model, engine, optimizer, checkpointer(run_id), checkpointer


def _train(engine, model, worker, steps: range) -> None:
    from sphinxx.jobs.loop import train_step

    for step in steps:
        train_step(engine, model, rank_group(step, worker.rank, worker.world_size), worker)


def _files(info) -> dict[str, tuple[int, str]]:
    return {f.path: (f.size, f.sha256) for f in info.manifest.files}


def _async_then_train(rank: int, world: int, storage: str, endpoint: str, trained: str):
    from sphinxx.jobs.checkpoint import RunState
    from sphinxx.jobs.loop import _max_across_ranks

    worker, model, engine, optimizer, ckpt, checkpointer = _setup(rank, world, storage, endpoint, "async")
    _train(engine, model, worker, range(2))
    state = RunState(2, {"next_step": 2}, {"kind": "cosine"}, tokens_seen=96)
    sync = checkpointer("sync")
    sync.save(state, {"rank": rank}, {"loss": 1.0})
    saved = _full_state(model, optimizer)
    began = time.monotonic()
    ckpt.save_async(state, {"rank": rank}, {"loss": 1.0})
    returned_after = time.monotonic() - began
    during = []  # (steps done, this rank's save still in flight, latest committed step seen by rank 0)
    for step in range(2, 200):
        _train(engine, model, worker, range(step, step + 1))
        ckpt.check()
        busy = ckpt.inflight.busy
        latest = ckpt.store.latest() if rank == 0 else None
        during.append((step + 1, busy, None if latest is None else latest.step))
        if step == 4:  # three steps trained: the test lets the store answer now
            with open(f"{trained}-{rank}", "w") as fh:
                fh.write("3 steps\n")
        if step >= 4 and not _max_across_ranks(float(busy)):  # both ranks' work is done
            break
        time.sleep(0.05 if step >= 4 else 0)
    ckpt.drain()
    landed = [i.step for i in ckpt.landed()]
    restored = ckpt.restore()
    assert restored is not None and restored.state == state and restored.rank_data == {"rank": rank}
    loaded = _full_state(model, optimizer)
    files = (_files(sync.store.latest()), _files(ckpt.store.latest())) if rank == 0 else None
    return returned_after, during, landed, saved, loaded, files


@pytest.mark.slow  # two processes building DeepSpeed engines: ~20 s on an idle machine
def test_async_save_trains_on_during_the_upload_and_restores_like_a_sync_save(tmp_path, s3_server, s3_bucket):
    proxy = FaultProxy(s3_server.endpoint_url)
    # Every object of the async checkpoint of step 2 waits until the workers trained 3 more steps.
    store_answers = threading.Event()
    proxy.add(
        Rule("delay", method="PUT", path=r"/async/checkpoints/step-000000002/", times=100, stall_s=120,
             release=store_answers)
    )  # fmt: skip
    trained = str(tmp_path / "trained")
    results: list = []
    args = (_async_then_train, 2, f"s3://{s3_bucket}/runs", proxy.endpoint_url, trained)
    runner = threading.Thread(target=lambda: results.extend(run_distributed(*args, timeout=300)))
    try:
        runner.start()
        deadline = time.monotonic() + 300
        while not all(os.path.exists(f"{trained}-{r}") for r in range(2)) and runner.is_alive():
            assert time.monotonic() < deadline, "the workers did not train 3 steps"
            time.sleep(0.1)
        store_answers.set()
        runner.join(300)
    finally:
        store_answers.set()
        proxy.close()
    assert len(results) == 2, "the workers failed (see the captured output)"
    for rank, (returned_after, during, landed, saved, loaded, files) in enumerate(results):
        assert returned_after < 5, returned_after  # the snapshot, not the (held) upload
        # The step counter moved while the save was in flight, and nothing was committed meanwhile.
        assert [(steps, busy) for steps, busy, _ in during[:3]] == [(3, True), (4, True), (5, True)], during
        assert during[-1][1] is False
        if rank == 0:
            # Nothing committed while the store held the upload (the first three steps; after the
            # release the commit may land between reading `busy` and reading the latest step).
            assert all(seen is None for _, _, seen in during[:3]), during
            assert during[-1][2] == 2 and landed == [2]
            sync_files, async_files = files
            assert sync_files == async_files  # same files, sizes and sha256: the same bytes
        for name in saved:  # the restore brings back exactly the state at the save
            for key in ("param", "exp_avg", "exp_avg_sq"):
                assert torch.equal(loaded[name][key], saved[name][key]), (rank, name, key)


def _failing_commit(rank: int, world: int, storage: str, endpoint: str):
    from sphinxx.jobs.checkpoint import CheckpointSaveError, RunState
    from sphinxx.jobs.loop import _max_across_ranks

    worker, model, engine, optimizer, ckpt, _ = _setup(rank, world, storage, endpoint, "failing")
    _train(engine, model, worker, range(2))
    ckpt.save(RunState(2, {"next_step": 2}, {}), {}, {"loss": 1.0})
    _train(engine, model, worker, range(2, 4))
    ckpt.save_async(RunState(4, {"next_step": 4}, {}), {}, {"loss": 1.0})
    raised, steps = None, 4
    while steps < 60:
        _train(engine, model, worker, range(steps, steps + 1))
        steps += 1
        try:
            ckpt.check()  # what the loop calls after every step
        except CheckpointSaveError as err:
            raised = str(err)
        if _max_across_ranks(float(raised is not None)):  # the test's processes stop together
            break
        time.sleep(0.05)
    try:
        ckpt.drain()
        drained = None
    except CheckpointSaveError as err:
        drained = str(err)
    latest = ckpt.store.latest()
    return raised, drained, steps, None if latest is None else latest.step


@pytest.mark.slow
def test_a_failed_background_commit_fails_the_next_step_and_the_previous_stays_latest(
    tmp_path, s3_server, s3_bucket
):
    proxy = FaultProxy(s3_server.endpoint_url)
    proxy.add(
        Rule("error", method="PUT", path=r"/failing/checkpoints/step-000000004/", times=10**6,
             status=403, code="AccessDenied")
    )  # fmt: skip
    try:
        results = run_distributed(
            _failing_commit, 2, f"s3://{s3_bucket}/runs", proxy.endpoint_url, timeout=300
        )
    finally:
        proxy.close()
    raised = [r[0] for r in results if r[0] is not None]
    assert raised, results
    for message in raised:
        assert "checkpoint of step 4 did not commit" in message and "AccessDenied" in message, message
        assert "previous checkpoint stays the latest" in message
    for _, drained, steps, latest in results:
        assert steps < 60
        # Every rank's drain raises too (one rank's failure is every rank's): no silent gap.
        assert drained is not None and "step 4" in drained, drained
        assert latest == 2


def _killed_mid_upload(rank: int, world: int, storage: str, endpoint: str, ready: str):
    from sphinxx.jobs.checkpoint import RunState

    worker, model, engine, optimizer, ckpt, _ = _setup(rank, world, storage, endpoint, "killed")
    _train(engine, model, worker, range(2))
    ckpt.save(RunState(2, {"next_step": 2}, {}), {}, {"loss": 1.0})
    _train(engine, model, worker, range(2, 4))
    ckpt.save_async(RunState(4, {"next_step": 4}, {}), {}, {"loss": 1.0})
    _train(engine, model, worker, range(4, 5))
    assert ckpt.inflight.busy
    with open(f"{ready}-{rank}", "w") as fh:
        fh.write("in flight\n")
    time.sleep(120)  # killed before this ends


@pytest.mark.slow
def test_workers_killed_during_the_background_upload_leave_the_previous_checkpoint_latest(
    tmp_path, s3_server, s3_bucket
):
    from sphinxx.storage import CheckpointStore, StorageOptions

    proxy = FaultProxy(s3_server.endpoint_url)
    proxy.add(Rule("delay", method="PUT", path=r"/killed/checkpoints/step-000000004/", times=100, stall_s=30))
    storage, ready = f"s3://{s3_bucket}/runs", str(tmp_path / "ready")
    ctx = context()
    queue, port = ctx.Queue(), _free_port()
    args = (storage, proxy.endpoint_url, ready)
    procs = [
        ctx.Process(target=_entry, args=(r, 2, port, _killed_mid_upload, args, queue, here()))
        for r in range(2)
    ]
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + 240
        while not all(os.path.exists(f"{ready}-{r}") for r in range(2)):
            assert time.monotonic() < deadline and all(p.is_alive() for p in procs), (
                "workers did not get there"
            )
            time.sleep(0.1)
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)  # as the kubelet's SIGKILL, or a node lost
            p.join(30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        proxy.close()
    store = CheckpointStore(storage, "killed", options=StorageOptions(endpoint_url=s3_server.endpoint_url))
    assert [c.step for c in store.committed()] == [2]
    assert store.latest().step == 2
    assert all(f.manifest is None for f in store.scan() if f.step == 4)  # at most a partial folder


@pytest.mark.parametrize("scratch", [False, True])
def test_in_process_saves_restore_from_memory_and_through_scratch(tmp_path, scratch: bool) -> None:
    """One process: sync and async saves, from memory or through a scratch folder, restore the
    state they saved; the scratch folder is left empty."""
    from sphinxx.jobs.checkpoint import Checkpointer, RunState
    from sphinxx.storage import CheckpointStore

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)

    def step() -> None:
        model(torch.randn(3, 4)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    folder = tmp_path / "scratch"
    store = CheckpointStore(tmp_path.as_uri(), "inproc")
    ckpt = Checkpointer(store, model, optimizer, 0, 1, scratch=str(folder) if scratch else None)
    step()
    ckpt.save(RunState(1, {}, {}), {}, {"loss": 1.0})
    step()
    ckpt.save_async(RunState(2, {}, {}), {}, {"loss": 1.0})
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    step()  # changes the model while the save may still be writing: the snapshot is what counts
    ckpt.drain()
    assert [i.step for i in ckpt.landed()] == [2]
    assert [c.step for c in store.committed()] == [1, 2]
    restored = ckpt.restore()
    assert restored is not None and restored.state.step == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert not scratch or not any(p.is_file() for p in folder.rglob("*"))
