"""Benchmarks scored inside the job (jobs/benchmarks.py) and by `sphinxx eval score`.

The task files are tiny JSONL written here in the task format (images as file:// URIs of PNGs
written here). The model is the run's own tiny `debug` SphinxX (seeded, so the same weights on
every rank and at every world size), or a checkpoint committed by the training Checkpointer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.jobs._dist import run_distributed
from tests.jobs.conftest import tiny_config
from tests.jobs.test_generate import reference_tokens, spoken, write_image, write_tokenizer


def _record(i: int, task: str, metric: str, answers: list[str], image: str | None, **extra) -> dict:
    question = f"What is shown in picture {i}?"
    return {
        "id": f"{task}-{i}", "task": task, "split": "val", "images": [image] if image else [],
        "question": question, "prompt": f"{question}\nAnswer the question using a single word or phrase.",
        "metric": metric, "answers": answers, **extra,
    }  # fmt: skip


def write_tasks(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path.as_uri()


def _tasks(tmp: Path) -> list[dict]:
    """Two benchmarks: 4 short-answer records (one image unreadable, one text-only) and 2 yes/no."""
    images = [Path(write_image(tmp / f"img{i}.png", (160 + 40 * i, 120), seed=i)).as_uri() for i in range(2)]
    short = [_record(i, "shapes", "exact_match", ["circle"], images[i]) for i in range(2)]
    short.append(_record(2, "shapes", "exact_match", ["red"], None))
    short.append(_record(3, "shapes", "exact_match", ["red"], (tmp / "missing.png").as_uri()))
    yesno = [_record(i, "exists", "pope", ["yes" if i else "no"], images[i]) for i in range(2)]
    return [
        {"uri": write_tasks(tmp / "shapes.jsonl", short)},
        {"uri": write_tasks(tmp / "exists.jsonl", yesno), "name": "exists-val"},
    ]


def test_every_rank_makes_as_many_generate_calls_and_every_record_is_dealt_once() -> None:
    from sphinxx.jobs.benchmarks import deal

    for count, batch in ((7, 2), (5, 2), (1, 8), (16, 3)):
        for world in (1, 2, 3):
            dealt = [deal(count, batch, r, world) for r in range(world)]
            assert len({len(d) for d in dealt}) == 1
            assert sorted(i for d in dealt for b in d for i in b) == list(range(count))
            assert all(len(b) <= batch for d in dealt for b in d)


MOE = {"num_experts": 4, "top_k": 2, "moe_ffn_dim": 64}


def _config(synth, tasks: list[dict], world: int):
    """The tiny run with 4 experts, split over `world` ranks by expert parallelism."""
    from sphinxx.schema.run import from_dict

    raw = tiny_config(synth, "bench", "file:///tmp/unused", "")
    raw["preset"] = "debug-moe"
    raw["model"]["overrides"].update(MOE)
    raw["parallel"].update(min_workers=world, max_workers=world, ep_size=world, zero_stage=2)
    raw["eval"] = {"benchmarks": {"tasks": tasks, "max_new_tokens": 4, "batch_size": 2}}
    return from_dict(raw)


def _evaluate(rank: int, world: int, synth, tasks: list[dict], state: dict[str, torch.Tensor]) -> dict:
    """This rank's evaluation with the weights `state` (every expert; an EP rank keeps its own).
    `world` 1 runs in this process, without a process group."""
    from sphinxx.jobs.benchmarks import benchmark_evaluator
    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.data.loader import image_config
    from sphinxx.jobs.data.template import ConversationEncoder, load_tokenizer
    from sphinxx.model.attach import attach_expert_parallel
    from sphinxx.model.expert_parallel import new_expert_parallel_groups
    from tests.jobs._tiny import run_model
    from tests.moe.test_generate_ep import _rank_slice

    cfg = _config(synth, tasks, world)
    model, _ = run_model(cfg, Worker(rank=rank, world_size=world))
    model.load_state_dict(_rank_slice(state, rank, world))
    if world > 1:
        ep, _ = new_expert_parallel_groups(world)
        attach_expert_parallel(model, ep)  # every MoE forward is an all-to-all between the ranks
    encoder = ConversationEncoder(load_tokenizer(cfg.data.tokenizer), cfg.data.seq_len)
    image = image_config(cfg.data, cfg.model.use_skip_token)
    evaluator = benchmark_evaluator(cfg.eval.benchmarks, encoder, image, rank, world, 0)
    assert evaluator is not None
    calls = [0]
    inner = evaluator.keep_going

    def counted(active: bool) -> bool:
        calls[0] += 1
        return inner(active)

    evaluator.keep_going = counted
    results = evaluator.run(model)
    return {
        "answers": {r.benchmark.name: [a["answer"] for a in r.answers] for r in results},
        "errors": {r.benchmark.name: [a["error"] for a in r.answers] for r in results},
        "scores": {r.benchmark.name: r.scores.values for r in results},
        "forwards": calls[0],
    }


@pytest.mark.slow
def test_one_rank_and_two_expert_parallel_ranks_give_the_same_answers_and_scores(synth, tmp_path) -> None:
    from sphinxx.jobs.context import Worker
    from tests.jobs._tiny import run_model

    tasks = _tasks(tmp_path)
    full, _ = run_model(_config(synth, tasks, 1), Worker())
    state = {k: v.detach().clone() for k, v in full.state_dict().items()}
    one = _evaluate(0, 1, synth, tasks, state)
    two = run_distributed(_evaluate, 2, synth, tasks, state)
    assert two[0]["forwards"] == two[1]["forwards"]  # lockstep: every rank ran as many decoder steps
    for got in two:
        assert got["answers"] == one["answers"] and got["scores"] == one["scores"]
    assert set(one["answers"]) == {"shapes", "exists-val"}
    assert any(one["answers"]["shapes"][:3])  # the model said something (not EOS at once everywhere)
    errors = one["errors"]["shapes"]
    assert errors[:3] == [None] * 3 and "missing.png" in errors[3]  # answered "", scored wrong
    assert set(one["scores"]["exists-val"]) == {"f1", "accuracy", "precision", "recall", "yes_ratio"}


def test_eval_score_scores_a_committed_checkpoint_as_its_own_answers_say(tmp_path: Path, capsys) -> None:
    from sphinxx.cli import main
    from tests.jobs.test_export import committed_run

    write_tokenizer(tmp_path / "tok")
    _, model = committed_run((tmp_path / "runs").as_uri(), "debug", str(tmp_path / "tok"), seq_len=1024)
    images = [write_image(tmp_path / f"q{i}.png", (320, 120 + 10 * i), seed=10 + i) for i in range(3)]
    said = [spoken(reference_tokens(model, tmp_path / "tok", f"q{i}?", images[i], 4)) for i in range(3)]
    assert all(said)
    records = [
        {**_record(i, "probe", "exact_match", [said[i] if i < 2 else "not this"], Path(images[i]).as_uri()),
         "prompt": f"q{i}?"}
        for i in range(3)
    ]  # fmt: skip
    tasks = write_tasks(tmp_path / "probe.jsonl", records)
    run = (tmp_path / "runs" / "ckpt-test").as_uri()
    predictions = tmp_path / "pred.jsonl"
    argv = ["eval", "score", run, tasks, "--max-new-tokens", "4", "--batch-size", "2"]
    assert main([*argv, "--json", "--predictions", str(predictions)]) == 0
    entries = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert entries == {
        "probe": {"score": pytest.approx(2 / 3), "metric": "exact_match", "samples": 3, "step": 3,
                  "tokens": 0, "details": {"accuracy": pytest.approx(200 / 3)}}
    }  # fmt: skip
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [r["answer"] for r in rows] == said and [r["score"] for r in rows] == [1.0, 1.0, 0.0]

    assert main([*argv, "--limit", "1"]) == 0
    table = capsys.readouterr().out
    assert "probe" in table and "1.0000" in table and "accuracy 100.00" in table

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**records[0], "metric": "bleu"}) + "\n")
    assert main(["eval", "score", run, str(bad)]) == 2
    assert "bad.jsonl:1.metric" in capsys.readouterr().err


def _train(rank: int, world: int, cfg, mlflow_run_id: str) -> dict:
    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.loop import train

    return train(cfg, Worker(rank=rank, world_size=world, mlflow_run_id=mlflow_run_id))


@pytest.mark.slow
def test_a_run_commits_logs_and_keeps_its_benchmark_scores_across_a_resume(
    tmp_path, synth, mlflow_server
) -> None:
    from mlflow.tracking import MlflowClient

    from sphinxx.jobs.tracking import create_run
    from sphinxx.operator import checkpoints, decide
    from sphinxx.schema.run import from_dict
    from sphinxx.schema.status import RunStatus, dump_status, parse_status
    from sphinxx.storage import CheckpointStore
    from tests.operator.test_decide import _job, _obs

    storage = (tmp_path / "ckpt").as_uri()
    tasks = _tasks(tmp_path)
    raw = tiny_config(synth, "bench-run", storage, mlflow_server.tracking_uri,
                      train={"steps": 2, "checkpoint_interval": 1},
                      eval={"benchmarks": {"tasks": tasks, "max_new_tokens": 2}})  # fmt: skip
    raw["parallel"].update(min_workers=1, max_workers=1)
    run_id = create_run(mlflow_server.tracking_uri, "train-e2e", "bench-run")
    run_distributed(_train, 1, from_dict(raw), run_id)
    store = CheckpointStore(storage, "bench-run")
    committed = {c.step: store.get(c.step).manifest.metrics for c in store.committed()}
    assert sorted(committed) == [1, 2] and "benchmarks" not in committed[1]  # scored at the end only
    entries = committed[2]["benchmarks"]
    assert set(entries) == {"shapes", "exists-val"}
    shapes = entries["shapes"]
    assert shapes["metric"] == "exact_match" and shapes["samples"] == 4 and shapes["step"] == 2
    assert 0.0 <= shapes["score"] <= 1.0 and shapes["tokens"] == committed[2]["tokens_seen"] > 0
    assert entries["exists-val"]["details"]["yes_ratio"] >= 0
    client = MlflowClient(mlflow_server.tracking_uri)
    assert [m.step for m in client.get_metric_history(run_id, "benchmark/shapes")] == [2]
    by_tokens = client.get_metric_history(run_id, "benchmark/exists-val_by_tokens")
    assert [m.step for m in by_tokens] == [shapes["tokens"]]
    f1 = client.get_metric_history(run_id, "benchmark/exists-val/f1")
    assert [m.value for m in f1] == [entries["exists-val"]["details"]["f1"]]
    artifact = client.download_artifacts(
        run_id, "benchmarks/step-000000002/shapes.jsonl", str(tmp_path / "got")
    )
    rows = [json.loads(line) for line in Path(artifact).read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"shapes-{i}" for i in range(4)] and "missing.png" in rows[3]["error"]

    # Resumed with one more step: step 2's scores are kept, not redone; step 3 is scored once.
    raw["train"]["steps"] = 3
    run_distributed(_train, 1, from_dict(raw), run_id)
    assert [m.step for m in client.get_metric_history(run_id, "benchmark/shapes")] == [2, 3]
    assert len(client.get_metric_history(run_id, "benchmark/exists-val/f1")) == 2
    latest = store.latest()
    assert latest is not None and latest.manifest.metrics["benchmarks"]["shapes"]["step"] == 3

    # The operator reads them into the TrainingRun's status.
    ckpt = checkpoints.latest(storage, "bench-run")
    assert ckpt is not None
    act = decide.decide_run(
        _obs(_job("Running", "RUNNING"), {"attempt": 1, "phase": "Running"}, checkpoint=ckpt)
    )
    wire = dump_status(act.status)
    assert wire["benchmarks"]["shapes"]["score"] == latest.manifest.metrics["benchmarks"]["shapes"]["score"]
    assert wire["benchmarks"]["exists-val"]["details"]["f1"] >= 0
    assert parse_status(RunStatus, wire).benchmarks["shapes"].samples == 4  # read back as stored
    assert torch.isfinite(torch.tensor(wire["metrics"]["loss"]))


def test_the_pre_flight_checks_benchmark_task_files_like_any_input(tmp_path: Path) -> None:
    import io

    from sphinxx.jobs.preflight import preflight
    from sphinxx.schema.run import load_config
    from sphinxx.sweep.inputs import Needed, run_inputs

    good = write_tasks(tmp_path / "good.jsonl", [_record(0, "shapes", "exact_match", ["red"], None)])
    missing = (tmp_path / "nowhere" / "gqa.jsonl").as_uri()
    tasks = [{"uri": good}, {"uri": missing, "name": "gqa"}]
    cfg = load_config(
        "debug", data={"eval": {"benchmarks": {"tasks": tasks}}, "storage": {"uri": tmp_path.as_uri()}}
    )
    items = [i for i in run_inputs(cfg) if i.field.startswith("eval.")]
    assert [(i.field, i.uri, i.access) for i in items] == [
        ("eval.benchmarks.tasks[0]", good, "read"), ("eval.benchmarks.tasks[1] (gqa)", missing, "read")
    ]  # fmt: skip
    out = io.StringIO()
    assert preflight([Needed(i, ("p",), True, None) for i in items], out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0] == f"ok    eval.benchmarks.tasks[0]: {good} (read; all points)"
    assert lines[1].startswith(f"FAIL  eval.benchmarks.tasks[1] (gqa): {missing} does not exist")
