"""`sphinxx eval`: benchmarks as data.

sphinxx eval import vqav2 ./vqav2/v2_OpenEnded_mscoco_val2014_questions.json ./tasks/vqav2_val.jsonl
sphinxx eval import mmbench s3://bench/mmbench/MMBench_DEV_EN.tsv s3://bench/tasks/mmbench_dev.jsonl
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sphinxx.evals.formats import FORMATS


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
