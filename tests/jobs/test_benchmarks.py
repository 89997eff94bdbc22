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


def bench_tasks(tmp: Path) -> list[dict]:
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

    tasks = bench_tasks(tmp_path)
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


def check_benchmarks(committed: dict[int, dict], client, run_id: str, tmp_path: Path) -> None:
    """A run of 4 steps committed at 2 and 4 scores `bench_tasks` at its end only: step 4's commit
    carries the entries, MLflow their numbers (against the step and the tokens) and each answer."""
    assert "benchmarks" not in committed[2]
    entries = committed[4]["benchmarks"]
    assert set(entries) == {"shapes", "exists-val"}
    shapes = entries["shapes"]
    assert shapes["metric"] == "exact_match" and shapes["samples"] == 4 and shapes["step"] == 4
    assert 0.0 <= shapes["score"] <= 1.0 and shapes["tokens"] == committed[4]["tokens_seen"] > 0
    assert set(entries["exists-val"]["details"]) == {"f1", "accuracy", "precision", "recall", "yes_ratio"}
    assert [m.step for m in client.get_metric_history(run_id, "benchmark/shapes")] == [4]
    by_tokens = client.get_metric_history(run_id, "benchmark/exists-val_by_tokens")
    assert [m.step for m in by_tokens] == [shapes["tokens"]]
    f1 = client.get_metric_history(run_id, "benchmark/exists-val/f1")
    assert [m.value for m in f1] == [entries["exists-val"]["details"]["f1"]]
    got = tmp_path / "got"
    artifact = client.download_artifacts(run_id, "benchmarks/step-000000004/shapes.jsonl", str(got))
    rows = [json.loads(line) for line in Path(artifact).read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"shapes-{i}" for i in range(4)] and "missing.png" in rows[3]["error"]
    assert [r["score"] for r in rows] == [1.0 if r["answer"] == r["answers"][0] else 0.0 for r in rows]


def check_status(storage: str, run_id: str, entries: dict) -> None:
    """The operator reads the newest commit's entries into the TrainingRun's status, as committed."""
    from sphinxx.operator import checkpoints, decide
    from sphinxx.schema.status import RunStatus, dump_status, parse_status
    from tests.operator.test_decide import _job, _obs

    ckpt = checkpoints.latest(storage, run_id)
    assert ckpt is not None
    running = {"attempt": 1, "phase": "Running"}
    act = decide.decide_run(_obs(_job("Running", "RUNNING"), running, checkpoint=ckpt))
    wire = dump_status(act.status)
    assert wire["benchmarks"] == entries and "benchmarks" not in wire["metrics"]
    assert parse_status(RunStatus, wire).benchmarks["shapes"].samples == 4  # read back as stored


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


def test_the_eval_cap_bench_runs_its_smallest_setting(tmp_path: Path) -> None:
    """bench/eval_cap.py (the README's cost of the micro family's cap) on a tiny committed model and
    two records of each synthetic task: it runs, times every cap and names its baseline."""
    import subprocess
    import sys

    from sphinxx.jobs.data.synth_bench import TASKS, write_bench
    from tests.jobs.test_export import committed_run

    write_tokenizer(tmp_path / "tok")
    committed_run((tmp_path / "runs").as_uri(), "debug", str(tmp_path / "tok"), seq_len=2048)
    write_bench(str(tmp_path / "synth"), 0, set(), count=2)
    root = Path(__file__).resolve().parents[2]
    argv = [str(tmp_path / "runs" / "ckpt-test"), "--tasks", str(tmp_path / "synth" / "bench"),
            "--caps", "1,2", "--max-new-tokens", "2", "--repeats", "1"]  # fmt: skip
    out = subprocess.run(
        [sys.executable, str(root / "bench" / "eval_cap.py"), *argv],
        capture_output=True, text=True, timeout=300, cwd=root,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["kind"] for r in rows] == ["setting", "timing", "timing", "ratio"]
    assert rows[0]["tasks"] == sorted(t.name for t in TASKS)
    assert [(r["cap"], r["records"]) for r in rows[1:3]] == [(1, len(TASKS)), (2, 2 * len(TASKS))]
    assert rows[-1]["baseline"] == "cap 2" and rows[-1]["ratio"] > 0
