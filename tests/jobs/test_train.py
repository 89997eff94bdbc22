"""The training job end to end: `python -m sphinxx.jobs.train` on local Ray, moto S3, MLflow.

Each test runs the real entrypoint in a subprocess (as a RayJob does) with 2 Ray Train workers
on the tiny debug flavor (see conftest.tiny_config), then checks what a user would look at: the
exit code and summary line, the committed checkpoints in S3, and the MLflow run.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from sphinxx.storage import CheckpointStore
from tests.jobs._dist import run_distributed
from tests.jobs.conftest import Job, read_traces, tiny_config, wait_until

pytestmark = pytest.mark.slow

METRICS = (
    "loss",
    "aux_loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "samples_per_s",
    "mfu",
    "visual_tokens",
    "skip_ratio",
)


def _client(mlflow_server):
    from mlflow import MlflowClient

    return MlflowClient(mlflow_server.tracking_uri)


def _steps(client, run_id: str, key: str = "loss") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _committed(storage: str, name: str) -> list[int]:
    return [c.step for c in CheckpointStore(storage, name).committed()]


def _settled(read: Callable[[], Any], quiet_s: float, timeout: float) -> Any:
    """`read()` once it has not changed for `quiet_s` seconds (the killed driver's workers are gone)."""
    value, since, deadline = read(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"still changing after {timeout:.0f}s: {value}"
        time.sleep(1.0)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


def test_two_workers_learn_survive_a_killed_worker_and_an_mlflow_outage_in_one_mlflow_run(
    tmp_path, synth, s3_bucket, mlflow_server, job_env
) -> None:
    """One job meets both faults a long run meets (one Ray Train start-up costs a minute here):
    a worker process dies after the first commit (OOM, node loss), and MLflow goes away at that
    moment and comes back two commits into the restarted segment. The job resumes from its last
    commit, loses at most that interval, keeps one MLflow run and logs every step."""
    import os
    import signal

    storage, name, steps, interval = f"s3://{s3_bucket}/runs", "basic", 40, 4
    trace = tmp_path / "trace"
    cfg = tiny_config(
        synth,
        name,
        storage,
        mlflow_server.tracking_uri,
        train={"steps": steps, "checkpoint_interval": interval},
        parallel={"max_failures": 1},
    )
    job = Job(tmp_path, name, cfg, job_env).start(extra_env={"SPHINXX_SAMPLE_TRACE": str(trace)})
    # Past the first commit: step 4's save commits in the background (train.async_save) while
    # steps 5, 6, ... train, so wait for the commit itself too.
    wait_until(
        lambda: _committed(storage, name) and [r for r in read_traces(trace) if r["step"] >= interval + 1],
        300,
        "step 6 and the first commit",
        job,
    )
    before = read_traces(trace)
    victim = next(r["pid"] for r in before if r["rank"] == 1)
    committed_before = max(_committed(storage, name))
    os.kill(victim, signal.SIGKILL)  # a worker process dies...
    mlflow_server.process.stop()  # ...and MLflow is away while the job restarts
    old_pids = {r["pid"] for r in before}
    try:

        def restarted_and_committed_twice() -> bool:
            new = [r["step"] for r in read_traces(trace) if r["pid"] not in old_pids]
            return bool(new) and max(_committed(storage, name)) >= min(new) + 2 * interval

        wait_until(restarted_and_committed_twice, 600, "two commits after the restart", job)
    finally:
        mlflow_server.restart()
    assert job.wait(300) == 0, job.tail()
    summary = job.summary()
    assert summary["status"] == "succeeded" and summary["step"] == steps
    assert summary["checkpoint_uri"] == f"{storage}/{name}/checkpoints/step-{steps:09d}"

    # The restart: new processes, resumed from a commit at or after the last one seen before.
    rows = read_traces(trace)
    new = [r for r in rows if r["pid"] not in old_pids]
    assert {r["pid"] for r in new} and victim not in {r["pid"] for r in new}
    resumed_at = min(r["step"] for r in new)  # 0-based index of the first step after the restore
    assert resumed_at % interval == 0 and resumed_at >= committed_before
    lost_until = max(r["step"] for r in rows if r["pid"] in old_pids)

    # Retention keep_last=3 (+ best 1, + final): the newest commits survive, each verifiable.
    store = CheckpointStore(storage, name)
    assert _committed(storage, name)[-3:] == [32, 36, 40]
    store.verify(40).raise_for_problems()
    manifest = store.get(40).manifest
    assert manifest.metadata.world_size == 2 and manifest.metadata.final
    # The scaling law's inputs (what the operator and the local runner fit from).
    fit = manifest.metrics
    assert fit["loss"] == summary["final_loss"] and fit["tokens_seen"] == summary["tokens_seen"] > 0
    assert (
        0
        < fit["num_params"]
        == summary["num_params"]
        < fit["num_params_total"]
        == summary["num_params_total"]
    )

    client = _client(mlflow_server)
    runs = client.search_runs(
        [client.get_experiment_by_name("train-e2e").experiment_id], f"tags.`sphinxx.run` = '{name}'"
    )
    assert [r.info.run_id for r in runs] == [summary["mlflow_run_id"]]  # one run across the restart
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    history = _steps(client, run.info.run_id)
    counts = Counter(s for s, _ in history)
    assert sorted(counts) == list(range(1, steps + 1))  # every step, the outage's replayed
    repeated = sorted(s for s, n in counts.items() if n > 1)
    # Only the lost interval (steps after the commit the restart resumed from) is logged twice.
    assert all(resumed_at < s <= lost_until + 1 for s in repeated), (repeated, resumed_at, lost_until)
    losses = [dict(history)[s] for s in range(1, steps + 1)]  # the last value logged per step
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    assert set(METRICS) <= set(run.data.metrics)
    assert run.data.params["train.global_batch"] == "4" and run.data.params["model.flavor"] == "debug"
    assert run.data.tags["sphinxx.world_size"] == "2"
    assert run.data.tags["checkpoint_uri"] == summary["checkpoint_uri"]
    # The cost estimate at the run's world size and step count, to compare with what it measured.
    assert 0 < float(run.data.tags["sphinxx.estimate.memory_per_rank_gib"]) < 64
    assert int(run.data.tags["sphinxx.estimate.tokens"]) == steps * 4 * int(run.data.params["data.seq_len"])
    assert "[sphinxx] estimate at world size 2:" in job.log_path.read_text()
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml"]
    assert "unreachable" in job.log_path.read_text()  # the outage was noticed, not fatal


def test_moe_expert_parallel_trains_and_checkpoints(
    tmp_path, synth, s3_bucket, mlflow_server, job_env
) -> None:
    storage, name = f"s3://{s3_bucket}/runs", "moe"
    cfg = tiny_config(
        synth,
        name,
        storage,
        mlflow_server.tracking_uri,
        model={"flavor": "debug-moe", "moe_kernel": "grouped", "overrides": {**cfg_model_moe()}},
        train={"steps": 6, "checkpoint_interval": 3},
        parallel={"zero_stage": 2, "ep_size": 2},
    )
    job = Job(tmp_path, name, cfg, job_env).start()
    assert job.wait(600) == 0, job.tail()
    summary = job.summary()
    assert summary["status"] == "succeeded" and summary["step"] == 6
    assert _committed(storage, name) == [3, 6]
    manifest = CheckpointStore(storage, name).get(6).manifest
    assert (manifest.metadata.ep_size, manifest.metadata.zero_stage) == (2, 2)
    # Every expert has its own weights file, written once (by the first expert replica).
    experts = sorted(f.path for f in manifest.files if f.path.startswith("model/expert-"))
    assert experts == [f"model/expert-{g:05d}.pt" for g in range(8)]
    client = _client(mlflow_server)
    run = client.get_run(summary["mlflow_run_id"])
    assert {"aux_loss", "moe/imbalance", "moe/expert0_share"} <= set(run.data.metrics)
    assert all(v > 0 for _, v in _steps(client, run.info.run_id, "aux_loss"))


def cfg_model_moe() -> dict:
    from tests.jobs.conftest import TINY_MODEL

    return {**TINY_MODEL, "num_experts": 8, "top_k": 2, "moe_ffn_dim": 32}


def test_elastic_two_workers_then_one_matches_an_uninterrupted_run(
    tmp_path, synth, s3_bucket, mlflow_server, job_env
) -> None:
    # 24 steps: a tiny step takes well under a second, and the workers outlive their killed driver
    # for a moment (Ray ends a dead driver's actors asynchronously), so with 12 they once reached
    # the last step before they died.
    storage, steps = f"s3://{s3_bucket}/runs", 24
    trace = tmp_path / "trace"
    common = {"train": {"steps": steps, "checkpoint_interval": 4}}
    # The subject: 2 workers, stopped (driver killed: what deleting the RayJob does) after a commit...
    job = Job(
        tmp_path,
        "elastic",
        tiny_config(synth, "elastic", storage, mlflow_server.tracking_uri, **common),
        job_env,
    )
    job.start(extra_env={"SPHINXX_SAMPLE_TRACE": str(trace / "a")})
    wait_until(lambda: _committed(storage, "elastic"), 300, "the first checkpoint", job)
    job.kill()
    stopped_at = _settled(lambda: max(_committed(storage, "elastic")), quiet_s=8, timeout=120)
    assert stopped_at < steps
    # ...then resumed with a single worker (same global batch: accumulation doubles).
    job.start(
        "parallel.min_workers=1",
        "parallel.max_workers=1",
        extra_env={"SPHINXX_SAMPLE_TRACE": str(trace / "b")},
    )
    assert job.wait(600) == 0, job.tail()
    assert job.summary()["resumed_from"] == stopped_at and job.summary()["step"] == steps

    # The reference: one worker, never interrupted (the same loop in a plain gloo process: no
    # Ray job needed to produce reference numbers).
    from sphinxx.jobs.tracking import create_run

    ref_cfg = tiny_config(synth, "reference", storage, mlflow_server.tracking_uri, **common)
    ref_cfg["parallel"].update(min_workers=1, max_workers=1)
    ref_run = create_run(mlflow_server.tracking_uri, "train-e2e", "reference")
    run_distributed(_train_reference, 1, ref_cfg, ref_run, job_env)

    client = _client(mlflow_server)
    # Steps of the lost interval appear twice; both values must match the reference.
    subject = _steps(client, job.summary()["mlflow_run_id"])
    reference = dict(_steps(client, ref_run))
    assert sorted({s for s, _ in subject}) == sorted(reference) == list(range(1, steps + 1))
    # Same weights, same batches: only the order of floating-point sums differs (2 vs 1 ranks).
    for step, value in subject:
        assert value == pytest.approx(reference[step], rel=1e-4, abs=1e-5), step

    # No sample twice, none skipped: the kept steps cover each global batch exactly once.
    first = [r for r in read_traces(trace / "a") if r["step"] < stopped_at]
    second = read_traces(trace / "b")
    assert min(r["step"] for r in second) == stopped_at
    seen = [p for r in first + second for p in r["positions"]]
    assert len(seen) == len(set(seen)) == steps * 4
    assert sorted(seen) == list(range(steps * 4))
    assert {r["world_size"] for r in first} == {2} and {r["world_size"] for r in second} == {1}


def _train_reference(rank: int, world: int, cfg: dict, run_id: str, env: dict) -> None:
    import os

    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.loop import train
    from sphinxx.schema.run import from_dict

    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    train(from_dict(cfg), Worker(rank=rank, world_size=world, mlflow_run_id=run_id))
