"""`sphinxx eval`: benchmarks as data.

sphinxx eval import vqav2 ./vqav2/v2_OpenEnded_mscoco_val2014_questions.json ./tasks/vqav2_val.jsonl
sphinxx eval import mmbench s3://bench/mmbench/MMBench_DEV_EN.tsv s3://bench/tasks/mmbench_dev.jsonl
sphinxx eval score s3://bucket/sweeps/sweep-a/run-1 s3://bench/tasks/vqav2_val.jsonl --limit 500

`score` runs the job's own evaluator (jobs/benchmarks.py) on one process; exit codes as
`sphinxx generate`: 0 ok, 1 storage problem, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from sphinxx.evals.formats import FORMATS

if TYPE_CHECKING:
    from sphinxx.storage import StorageOptions


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="benchmarks as task files (docs/evaluation.md)")
    parser.set_defaults(group_parser=parser)
    sub = parser.add_subparsers(metavar="SUBCOMMAND")
    imp = sub.add_parser(
        "import",
        help="a benchmark's official annotation files -> a task JSONL (+ DEST.report.json)",
        description="docs/evaluation.md says what SRC is for each format and where its images are expected.",
    )
    imp.add_argument("format", metavar="FORMAT", choices=list(FORMATS), help=f"one of {', '.join(FORMATS)}")
    imp.add_argument("src", metavar="SRC", help="the official file or folder (local path, file:// or s3://)")
    imp.add_argument("dest", metavar="DEST", help="the task JSONL to write (local path, file:// or s3://)")
    imp.add_argument("--images", default=None, help="the image root (default: the format's place beside SRC)")
    imp.add_argument("--split", default=None, help="keep only this split (default: every split in SRC)")
    imp.add_argument(
        "--annotations",
        default=None,
        help="the companion file: VQAv2 annotations, RefCOCO instances.json, ScienceQA pid_splits.json",
    )
    imp.set_defaults(func=_import)
    _register_score(sub)


def _register_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score a committed checkpoint on task files, as the job does at the end of a point",
        description="Prints one row per task file; docs/evaluation.md, 'Scoring a checkpoint'.",
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="run root or step folder (s3://, file:// or a path)"
    )
    p.add_argument(
        "tasks", metavar="TASKS.jsonl", nargs="+", help="task files (sphinxx eval import writes them)"
    )
    p.add_argument("--step", type=int, metavar="N", help="committed step to load (default: the latest)")
    p.add_argument("--limit", type=int, default=0, metavar="K", help="score the first K records of each file")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="answer length limit (32)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="questions per generate call (8)")
    p.add_argument("--tokenizer", metavar="URI", help="tokenizer files (default: the run's data.tokenizer)")
    p.add_argument("--predictions", metavar="FILE", help="write each record's answer and score here (JSONL)")
    p.add_argument("--json", action="store_true", help="print the committed entries as JSON, not a table")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL)")
    p.add_argument("--profile", help="named AWS profile for credentials (default: the environment)")
    p.set_defaults(func=_score)


def _score(args: argparse.Namespace) -> int:
    # torch, transformers and the storage client load when the command runs, not at `sphinxx --help`.
    from sphinxx.storage import StorageOptions
    from sphinxx.storage.cli import at_boundary

    options = StorageOptions(endpoint_url=args.endpoint_url, profile=args.profile)
    return at_boundary(lambda: _run_score(args, options), args.checkpoint, options.resolved_endpoint())


def _run_score(args: argparse.Namespace, options: StorageOptions) -> int:
    import json

    from sphinxx.evals.report import entry, table
    from sphinxx.jobs.benchmarks import BenchmarkEvaluator, read_benchmark, unique_names
    from sphinxx.jobs.generate import DEFAULT_STOP, load_generator
    from sphinxx.model.generate import GenerationConfig
    from sphinxx.storage import uri as uri_mod
    from sphinxx.storage.objectfs import open_fs

    if args.limit < 0 or args.batch_size < 1:
        raise ValueError("--limit must be >= 0 and --batch-size >= 1")
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, stop_strings=(DEFAULT_STOP,))
    benchmarks = unique_names([read_benchmark(uri, None, args.limit, options) for uri in args.tasks])
    generator = load_generator(args.checkpoint, step=args.step, options=options, tokenizer=args.tokenizer)
    evaluator = BenchmarkEvaluator(
        benchmarks, generator.encoder, generator.image, config, args.batch_size, options=options,
        log=sys.stderr,
    )  # fmt: skip
    results = evaluator.run(generator.model)
    entries = {r.benchmark.name: entry(r.scores, generator.step, generator.tokens_seen) for r in results}
    if args.predictions:
        dest = uri_mod.normalize(args.predictions)
        open_fs(dest, options).write_bytes(dest, "".join(r.predictions_jsonl() for r in results).encode())
    print(json.dumps(entries, sort_keys=True) if args.json else table(entries))
    return 0


def _import(args: argparse.Namespace) -> int:
    from sphinxx.jobs.eval_import import import_benchmark  # the storage client (boto3): when the command runs

    try:
        summary = import_benchmark(
            args.format,
            args.src,
            args.dest,
            images=args.images,
            split=args.split,
            annotations=args.annotations,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = summary.report
    print(f"{report['records']} records -> {summary.dest}")
    if report["images_written"]:
        print(f"{report['images_written']} images written beside it")
    say_skipped(report, summary.report_uri)
    for note in report["notes"]:
        print(f"note: {note}", file=sys.stderr)
    return 0


def say_skipped(report: dict[str, Any], report_uri: str) -> None:
    """The skipped records of an import report on stderr: how many, the five commonest reasons."""
    if report["skipped"]:
        print(f"{report['skipped']} bad records skipped (see {report_uri}):", file=sys.stderr)
        for reason, count in list(report["reasons"].items())[:5]:
            print(f"  {count} x {reason}", file=sys.stderr)
