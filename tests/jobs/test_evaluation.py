"""Held-out evaluation (jobs/evaluation.py): the dealing, the metrics, equal sums at 1 and 2 ranks,
and a run that evaluates, commits the results with its checkpoints and keeps them on resume: the
held-out split and the benchmarks of `eval.benchmarks` (jobs/benchmarks.py), whose scores also
reach MLflow (with each answer as an artifact) and the operator's TrainingRun status."""

from __future__ import annotations

import math

import pytest
import torch

from tests.jobs._dist import run_distributed
from tests.jobs.conftest import tiny_config
from tests.jobs.test_benchmarks import bench_tasks, check_benchmarks, check_status


def test_due_every_interval_and_at_the_end_never_twice() -> None:
    from sphinxx.jobs.evaluation import due

    assert [s for s in range(1, 11) if due(s, 10, 4, None)] == [4, 8, 10]
    assert [s for s in range(1, 11) if due(s, 10, 0, None)] == [10]
    assert not due(8, 10, 4, 8)  # a resumed run that already evaluated step 8


def test_every_rank_runs_as_many_forwards_and_all_keys_are_dealt_once() -> None:
    from sphinxx.jobs.data.sampler import MicroBatchKey
    from sphinxx.jobs.evaluation import rank_keys

    keys = [MicroBatchKey(-1, i, (0,), (0,), (i,)) for i in range(7)]
    for world in (1, 2, 3, 8):
        dealt = [rank_keys(keys, r, world) for r in range(world)]
        assert len({len(d) for d in dealt}) == 1
        assert sorted(k.micro for d in dealt for k in d if k is not None) == list(range(7))


def test_metrics_per_source_domain_and_overall() -> None:
    from sphinxx.jobs.evaluation import HeldoutSums

    sums = torch.tensor([[10.0, 5, 20], [30.0, 10, 40], [6.0, 3, 0]], dtype=torch.float64)
    m = HeldoutSums(("a", "b", "c"), ("language", "language", "ocr"), sums).metrics()
    assert m["heldout_loss"] == pytest.approx(46 / 18)
    assert m["heldout_bpb"] == pytest.approx(46 / math.log(2) / 60)
    assert m["heldout_bpb/language"] == pytest.approx(40 / math.log(2) / 60)
    assert m["heldout_loss/ocr"] == pytest.approx(2.0) and "heldout_bpb/ocr" not in m  # no bytes: no bpb
    assert m["heldout_bpb/source:b"] == pytest.approx(30 / math.log(2) / 40)


def _heldout_sums(rank: int, world: int, synth) -> list[list[float]]:
    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.data.dataset import SamplePipeline
    from sphinxx.jobs.evaluation import HeldoutEvaluator
    from sphinxx.jobs.loop import _all_reduce
    from sphinxx.jobs.parallelize import init_distributed
    from sphinxx.schema.run import from_dict
    from tests.jobs._tiny import run_data, run_model

    init_distributed("gloo")
    raw = tiny_config(synth, "heldout", "file:///tmp/unused", "", data={"heldout_records": 4})
    raw["parallel"].update(min_workers=world, max_workers=world)
    raw["tracking"] = {"enabled": False}
    cfg = from_dict(raw)
    worker = Worker(rank=rank, world_size=world)
    data = run_data(cfg, rank, world)
    model, _ = run_model(cfg, worker)  # seeded: the same weights on every rank and at every world size
    evaluator = HeldoutEvaluator(
        data.mixture, SamplePipeline(data.encoder, data.image), 1, rank, world, _all_reduce
    )
    return evaluator.run(model, "cpu").sums.tolist()


@pytest.mark.slow
def test_one_and_two_ranks_give_the_same_sums(synth) -> None:
    one = run_distributed(_heldout_sums, 1, synth)[0]
    two = run_distributed(_heldout_sums, 2, synth)
    assert two[0] == two[1]  # summed over the ranks
    assert all(row[1] > 0 and row[2] > 0 for row in one)  # every source has targets and bytes
    torch.testing.assert_close(torch.tensor(two[0]), torch.tensor(one), rtol=1e-9, atol=1e-6)


def _train(rank: int, world: int, cfg, mlflow_run_id: str) -> dict:
    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.loop import train

    return train(cfg, Worker(rank=rank, world_size=world, mlflow_run_id=mlflow_run_id))


@pytest.mark.slow
def test_a_run_evaluates_commits_the_results_and_resumes_without_redoing_them(
    tmp_path, synth, mlflow_server
) -> None:
    from mlflow.tracking import MlflowClient

    from sphinxx.jobs.tracking import create_run
    from sphinxx.schema.run import from_dict
    from sphinxx.storage import CheckpointStore

    storage = (tmp_path / "ckpt").as_uri()
    raw = tiny_config(synth, "eval-run", storage, mlflow_server.tracking_uri,
                      train={"steps": 4, "checkpoint_interval": 2, "eval_interval": 2},
                      data={"heldout_records": 4},
                      eval={"benchmarks": {"tasks": bench_tasks(tmp_path), "max_new_tokens": 2}})  # fmt: skip
    raw["parallel"].update(min_workers=1, max_workers=1)
    run_id = create_run(mlflow_server.tracking_uri, "train-e2e", "eval-run")
    run_distributed(_train, 1, from_dict(raw), run_id)
    store = CheckpointStore(storage, "eval-run")
    committed = {c.step: dict(store.get(c.step).manifest.metrics) for c in store.committed()}
    assert sorted(committed) == [2, 4]
    for metrics in committed.values():
        assert metrics["heldout_bpb"] > 0 and metrics["heldout_loss"] > 0
        assert {"heldout_bpb/language", "heldout_bpb/vision-language"} <= set(metrics)
    assert committed[2]["heldout_bpb"] != committed[4]["heldout_bpb"]  # measured again after training on
    client = MlflowClient(mlflow_server.tracking_uri)
    history = client.get_metric_history(run_id, "heldout_bpb")
    assert [m.step for m in history] == [2, 4]
    by_tokens = client.get_metric_history(run_id, "heldout_bpb_by_tokens")
    assert [m.step for m in by_tokens] == [int(committed[2]["tokens_seen"]), int(committed[4]["tokens_seen"])]

    check_benchmarks(committed, client, run_id, tmp_path)

    # Resumed with more steps: continues from step 4 (evaluated there already), evaluates at 6.
    raw["train"]["steps"] = 6
    run_distributed(_train, 1, from_dict(raw), run_id)
    history = client.get_metric_history(run_id, "heldout_bpb")
    assert [m.step for m in history] == [2, 4, 6]
    assert [m.step for m in client.get_metric_history(run_id, "benchmark/shapes")] == [4, 6]  # once each
    latest = store.latest()
    assert latest is not None and latest.manifest.metrics["benchmarks"]["shapes"]["step"] == 6
    check_status(storage, "eval-run", latest.manifest.metrics["benchmarks"])
