"""Benchmarks scored by generation inside the job and by `sphinxx eval score` (docs/training.md,
"Benchmarks in every point"; docs/evaluation.md for the tasks and metrics).

The task files (`eval.benchmarks.tasks`) are read when the job starts, on every rank, so a bad
file fails the run before it trains; each keeps its first `max_samples` records. At the end of
the point (and every `train.eval_interval` with `at_eval_interval`) the records of every task,
pooled, are dealt round-robin over the ranks as the held-out micro-batches are
(`jobs.evaluation`), in batches of `batch_size`; every rank runs the same number of generate
calls (a rank short of records pads with a one-token prompt whose answer is dropped) and, inside
each, as many decoder forwards (`keep_going`: an all-reduce of "still generating"), because
expert parallelism exchanges tokens inside every forward. The answers are gathered on every
rank and scored there with `sphinxx.evals.metrics.score`, so the scores are the same at any
world size (a rank's share depends on it, the answers do not).

A record that cannot be asked (its image unreadable, its prompt and answer longer than the
model's `max_seq_len`) is answered "" (scored wrong) and its `error` is in the predictions and
on the job log: the evaluation at the end of a long run never fails on one record.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

import torch

from sphinxx.evals.metrics import Scores, score
from sphinxx.evals.task import TaskRecord, read_records
from sphinxx.jobs.checkpoint.dist import all_gather
from sphinxx.jobs.data.template import ConversationEncoder
from sphinxx.jobs.generate import DEFAULT_STOP, read_image
from sphinxx.jobs.metrics import all_reduce_host
from sphinxx.model.anyres import AnyResConfig, process_image
from sphinxx.model.generate import GenerationConfig, Prompt, generate
from sphinxx.model.sphinx import SphinxX
from sphinxx.schema.fields import SchemaError
from sphinxx.schema.run import BenchmarksConfig
from sphinxx.storage import StorageError, StorageOptions
from sphinxx.storage import uri as uri_mod
from sphinxx.storage.objectfs import open_fs


@dataclass(frozen=True)
class Benchmark:
    """One task file: its name, where it is, and the records scored (the first `limit`)."""

    name: str
    uri: str
    records: list[TaskRecord]
    total: int  # records in the file

    @property
    def metric(self) -> str:
        return self.records[0].metric


@dataclass
class BenchmarkResult:
    """One benchmark's scores and each record's answer (the per-sample predictions)."""

    benchmark: Benchmark
    scores: Scores
    answers: list[dict[str, Any]] = field(default_factory=list)

    def predictions_jsonl(self) -> str:
        """One JSON object a record: id, question, answer, references, score (0..1), finish, error."""
        lines = []
        for record, answer in zip(self.benchmark.records, self.answers, strict=True):
            row = {
                "id": record.id, "task": record.task, "split": record.split, "question": record.question,
                "answer": answer["answer"], "answers": record.answers, "choices": record.choices,
                "box": record.box, "score": self.scores.per_record.get(record.id),
                "finish": answer["finish"], "error": answer["error"],
            }  # fmt: skip
            lines.append(json.dumps(row, ensure_ascii=False))
        return "\n".join(lines) + "\n"


def read_benchmark(uri: str, name: str | None, limit: int, options: StorageOptions | None) -> Benchmark:
    """The task file at `uri` (local path, file:// or s3://), its first `limit` records (0: all);
    errors name the file (and the line and field of a bad record)."""
    where = uri_mod.normalize(uri)
    try:
        text = open_fs(where, options).read_bytes(where).decode("utf-8")
    except FileNotFoundError:
        raise ValueError(f"{uri}: no such task file") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{uri}: not UTF-8 text ({err.reason})") from None
    try:
        records = read_records(text, uri)
    except SchemaError as err:
        raise ValueError(str(err)) from None
    if not records:
        raise ValueError(f"{uri}: no task records (one JSON object a line)")
    metrics = sorted({r.metric for r in records})
    tasks = sorted({r.task for r in records})
    if len(metrics) > 1:
        raise ValueError(f"{uri}: one task file is scored by one metric; it has {metrics}")
    if name is None and len(tasks) > 1:
        raise ValueError(f"{uri}: records of several tasks {tasks}; give the file a name")
    return Benchmark(name or tasks[0], uri, records[:limit] if limit else records, len(records))


def read_benchmarks(config: BenchmarksConfig, options: StorageOptions | None) -> list[Benchmark]:
    """Every task file of `eval.benchmarks`; a file that cannot be used is an error naming its field."""
    out: list[Benchmark] = []
    for i, task in enumerate(config.tasks):
        try:
            out.append(read_benchmark(task.uri, task.name, config.max_samples, options))
        except (ValueError, StorageError) as err:
            raise ValueError(f"eval.benchmarks.tasks[{i}]: {err}") from None
    return unique_names(out, "eval.benchmarks.tasks: ")


def unique_names(benchmarks: list[Benchmark], where: str = "") -> list[Benchmark]:
    """`benchmarks`, if no two share a name (their results are keyed by it)."""
    names = [b.name for b in benchmarks]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"{where}two task files are both named {name!r}; give each its own name")
    return benchmarks


def generation_config(config: BenchmarksConfig) -> GenerationConfig:
    """The generation settings of `eval.benchmarks` (greedy unless temperature > 0)."""
    return GenerationConfig(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
        seed=config.seed if config.temperature > 0 else None, stop_strings=(DEFAULT_STOP,),
    )  # fmt: skip


def deal(count: int, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """Rank `rank`'s batches of item indices, round-robin; every rank gets as many batches (the
    last ones may be empty: a padding call). Pure."""
    per_rank = -(-count // world_size)
    mine = list(range(rank, count, world_size))
    calls = -(-per_rank // batch_size)
    return [mine[i * batch_size : (i + 1) * batch_size] for i in range(calls)]


def _keep_going(active: bool) -> bool:
    """Whether any rank still generates (one all-reduce of one flag; every rank calls it)."""
    return bool(all_reduce_host(torch.tensor([float(active)]), op="max")[0].item() > 0)


class BenchmarkEvaluator:
    """Scores the benchmarks with the model on this rank, in lockstep with the other ranks."""

    def __init__(
        self,
        benchmarks: Sequence[Benchmark],
        encoder: ConversationEncoder,
        image: AnyResConfig,
        config: GenerationConfig,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        interval: int = 0,
        options: StorageOptions | None = None,
        gather: Callable[[Any], list[Any]] = all_gather,
        keep_going: Callable[[bool], bool] = _keep_going,
        log: TextIO | None = None,
    ):
        self.benchmarks, self.encoder, self.image, self.options = list(benchmarks), encoder, image, options
        self.config = replace(config, eos_ids=config.eos_ids or (encoder.eos_id,))
        self.interval, self.rank, self.world_size = interval, rank, world_size
        self.gather, self.keep_going, self.log = gather, keep_going, log
        self.items = [(b, r) for b, bench in enumerate(self.benchmarks) for r in range(len(bench.records))]
        self.batches = deal(len(self.items), batch_size, rank, world_size)

    @torch.no_grad()
    def run(self, model: SphinxX) -> list[BenchmarkResult]:
        """Every benchmark's scores (a collective: every rank calls it, and gets the same results)."""
        was_training = model.training
        model.eval()
        mine: dict[int, dict[str, Any]] = {}
        try:
            for batch in self.batches:
                mine.update(self._answer(model, batch))
        finally:
            model.train(was_training)
        answers: dict[int, dict[str, Any]] = {}
        for part in self.gather(mine):
            answers.update(part)
        return self._score(answers)

    def _answer(self, model: SphinxX, batch: list[int]) -> dict[int, dict[str, Any]]:
        """One generate call over this rank's batch (a padding prompt when none can be asked)."""
        out: dict[int, dict[str, Any]] = {}
        asked: list[tuple[int, Prompt, str]] = []
        for i in batch:
            b, r = self.items[i]
            record = self.benchmarks[b].records[r]
            prompt, error = self.prompt(record, model.args.llm.max_seq_len)
            if prompt is None:
                out[i] = {"answer": "", "finish": "error", "error": error}
                print(f"[sphinxx] benchmark {self.benchmarks[b].name}, record {record.id}: {error}",
                      file=self.log or sys.stdout, flush=True)  # fmt: skip
            else:
                asked.append((i, prompt, record.answer_prefix))
        prompts = [p for _, p, _ in asked] or [Prompt([self.encoder.bos_id])]
        generated = generate(model, prompts, self.config, decode=self._decode, keep_going=self.keep_going)
        for (i, _, prefix), result in zip(asked, generated, strict=False):
            text = (result.text or "").strip()
            out[i] = {"answer": f"{prefix} {text}".strip() if prefix else text, "finish": result.finish,
                      "error": None}  # fmt: skip
        return out

    def prompt(self, record: TaskRecord, max_seq_len: int) -> tuple[Prompt | None, str | None]:
        """The record as model input (its first image, the prompt in the run's template, the
        answer prefix), or None and why it cannot be asked."""
        processed = None
        if record.images:
            try:
                processed = process_image(read_image(record.images[0], self.options), self.image)
            except (OSError, ValueError, StorageError) as err:
                return None, f"image {record.images[0]}: {type(err).__name__}: {err}"
        tokens = self.encoder.encode_prompt(record.prompt)
        if record.answer_prefix:
            tokens += self.encoder.tokenizer(" " + record.answer_prefix, add_special_tokens=False)[
                "input_ids"
            ]
        used = len(tokens) + (processed.num_tokens if processed is not None else 0)
        if used + self.config.max_new_tokens > max_seq_len:
            return None, (
                f"{used} prompt positions + {self.config.max_new_tokens} new tokens exceed max_seq_len "
                f"{max_seq_len}"
            )
        return Prompt(tokens, processed), None

    def _decode(self, ids: list[int]) -> str:
        return str(self.encoder.tokenizer.decode(ids, skip_special_tokens=True))

    def _score(self, answers: dict[int, dict[str, Any]]) -> list[BenchmarkResult]:
        results = [BenchmarkResult(bench, Scores("", {})) for bench in self.benchmarks]
        for i, (b, _) in enumerate(self.items):
            results[b].answers.append(answers[i])
        for result in results:
            records = result.benchmark.records
            predictions = {r.id: a["answer"] for r, a in zip(records, result.answers, strict=True)}
            result.scores = score(records, predictions)
        return results


def benchmark_evaluator(
    config: BenchmarksConfig,
    encoder: ConversationEncoder,
    image: AnyResConfig,
    rank: int,
    world_size: int,
    eval_interval: int,
    options: StorageOptions | None = None,
) -> BenchmarkEvaluator | None:
    """The job's evaluator of `eval.benchmarks` (None without tasks); reads every task file now."""
    if not config.tasks:
        return None
    benchmarks = read_benchmarks(config, options)
    return BenchmarkEvaluator(
        benchmarks, encoder, image, generation_config(config), config.batch_size, rank, world_size,
        interval=eval_interval if config.at_eval_interval else 0, options=options,
    )  # fmt: skip
