"""`sphinxx data`: make the synthetic set, and inspect sources and their data-fraction subsets.

sphinxx data synth ./synth --size 200 --seed 0          # local folder (or s3://bucket/prefix)
sphinxx data index s3://bucket/coco --name coco --domain vision   # manifest + indexes for JSONL shards
sphinxx data import llava ./llava/llava_instruct_150k.json s3://bucket/llava --images s3://bucket/coco/train2017
sphinxx data inspect ./synth/data.yaml --fraction 0.25   # counts per source for a fraction
sphinxx data inspect s3://bucket/src-a s3://bucket/src-b --tokenizer ./synth/tokenizer --json
"""

from __future__ import annotations

import argparse
import json
import sys

from sphinxx.jobs.eval_cli import say_skipped
from sphinxx.schema.run import DOMAINS

# The formats of `data import` (importers.FORMATS, kept here so that registration imports no parser).
IMPORT_FORMATS = (
    "llava",
    "sharegpt",
    "coco-captions",
    "vqav2",
    "textvqa",
    "docvqa",
    "refcoco",
    "refcoco+",
    "refcocog",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="synthetic data set and data-source inspection")
    parser.set_defaults(group_parser=parser)
    sub = parser.add_subparsers(metavar="SUBCOMMAND")

    synth = sub.add_parser(
        "synth", help="write the synthetic multimodal set, its tokenizer and its benchmark task files"
    )
    synth.add_argument("out", metavar="OUT_URI", help="folder or s3:// prefix to write")
    synth.add_argument("--size", type=int, required=True, help="records in total over all sources")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    synth.add_argument("--shard-size", type=int, default=64, help="records per JSONL shard (default 64)")
    synth.set_defaults(func=_synth)

    index = sub.add_parser("index", help="write line indexes and manifest.json for existing JSONL shards")
    index.add_argument("root", metavar="SOURCE_URI", help="source root holding the shards")
    index.add_argument("--name", required=True, help="source name (as in data.sources)")
    index.add_argument(
        "--domain", required=True, help="mixture domain: language, vision, vision-language, ..."
    )
    index.add_argument("--pattern", default="shards/*.jsonl", help="shards relative to the root (glob)")
    index.set_defaults(func=_index)

    _register_import(sub)

    inspect = sub.add_parser("inspect", help="records, images and tokens per source for a data fraction")
    inspect.add_argument(
        "uris",
        nargs="+",
        metavar="URI",
        help="source roots, or a data.yaml / run-config YAML listing sources",
    )
    inspect.add_argument(
        "--fraction", type=float, default=None, help="data fraction (default: config or 1.0)"
    )
    inspect.add_argument("--seed", type=int, default=None, help="data seed (default: config or 0)")
    inspect.add_argument("--tokenizer", default=None, help="count text tokens with this tokenizer")
    inspect.add_argument(
        "--canvas", type=int, default=None, help="canvas for image-token counts (default 448)"
    )
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.set_defaults(func=_inspect)


def _register_import(sub: argparse._SubParsersAction) -> None:
    imp = sub.add_parser(
        "import",
        help="a public data set's published files -> a source (DEST/import.report.json lists the skipped)",
        description="docs/training.md, 'Importing public data sets', says what SRC is for each format.",
    )
    imp.add_argument(
        "format", metavar="FORMAT", choices=IMPORT_FORMATS, help=f"one of {', '.join(IMPORT_FORMATS)}"
    )
    imp.add_argument("src", metavar="SRC", help="the published file (local path, file:// or s3://)")
    imp.add_argument(
        "dest", metavar="DEST", help="the source root to write (folder, file:// or s3:// prefix)"
    )
    imp.add_argument("--images", default=None, help="the image root (default: the format's place beside SRC)")
    imp.add_argument(
        "--annotations", default=None, help="the companion file: VQAv2 annotations, RefCOCO instances.json"
    )
    imp.add_argument("--split", default=None, help="RefCOCO: the refs' split to keep (default train)")
    imp.add_argument("--name", default=None, help="source name (default: DEST's last segment)")
    imp.add_argument("--domain", default=None, choices=DOMAINS, help="mixture domain (default: the format's)")
    imp.add_argument(
        "--copy-images", action="store_true", help="copy the images into DEST/images (default: URIs)"
    )
    imp.add_argument("--shard-size", type=int, default=4096, help="records per JSONL shard (default 4096)")
    imp.set_defaults(func=_import)


def _synth(args: argparse.Namespace) -> int:
    from sphinxx.jobs.data.synth import write_synth  # tokenizers, PIL (4 s): when the command runs

    try:
        result = write_synth(args.out, args.size, args.seed, args.shard_size)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, manifest in result.manifests.items():
        print(
            f"{name:16s} {manifest.domain:16s} {manifest.num_records:6d} records "
            f"{manifest.num_images:6d} images"
        )
    print(f"tokenizer: {result.tokenizer_uri} ({result.vocab_size} ids)")
    print(f"config:    {result.config_uri}")
    for name, uri in result.benchmarks.items():
        print(f"benchmark: {uri} ({name})")
    return 0


def _index(args: argparse.Namespace) -> int:
    from sphinxx.jobs.data.format import index_source  # the storage client (boto3): as above

    if args.domain not in DOMAINS:
        print(f"error: --domain must be one of {', '.join(DOMAINS)}", file=sys.stderr)
        return 2
    try:
        manifest, invalid = index_source(args.root, args.name, args.domain, args.pattern)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{manifest.name}: {manifest.num_records} records in {len(manifest.shards)} shards, "
        f"{manifest.num_images} with images"
    )
    if invalid:
        print(
            f"warning: {invalid} lines are not valid records; they will be skipped as bad records",
            file=sys.stderr,
        )
    return 0


def _import(args: argparse.Namespace) -> int:
    from sphinxx.jobs.data.importer import ImportOptions, import_source  # ijson, boto3: when it runs
    from sphinxx.storage.cli import at_boundary

    options = ImportOptions(
        args.format,
        args.src,
        args.dest,
        images=args.images,
        annotations=args.annotations,
        split=args.split,
        name=args.name,
        domain=args.domain,
        copy_images=args.copy_images,
        records_per_shard=args.shard_size,
    )

    def run() -> int:
        result = import_source(options)
        report = result.report
        again = f" (went on after {result.resumed_at} items of an earlier run)" if result.resumed_at else ""
        again = " (imported before: nothing to do)" if result.finished_before else again
        print(f"{report['name']} ({report['domain']}): {report['records']} records -> {result.dest}{again}")
        say_skipped(report, result.report_uri)
        return 0

    return at_boundary(run, args.src, None, name_uri=False)


def _inspect(args: argparse.Namespace) -> int:
    from sphinxx.jobs.data.report import inspect_sources  # torch, tokenizers: as above

    try:
        report = inspect_sources(
            args.uris, fraction=args.fraction, seed=args.seed, tokenizer=args.tokenizer, canvas=args.canvas
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"fraction {report['fraction']:g}, seed {report['seed']}")
    header = f"{'source':16s} {'domain':16s} {'records':>8s} {'kept':>8s} {'share':>7s} {'images':>7s}"
    print(header + f" {'img tokens':>11s} {'text tokens':>11s}")
    for name, row in report["sources"].items():
        text = "-" if row["text_tokens"] is None else str(row["text_tokens"])
        print(
            f"{name:16s} {row['domain']:16s} {row['records']:8d} {row['kept']:8d} {row['share']:7.3f} "
            f"{row['images']:7d} {row['image_tokens']:11d} {text:>11s}"
        )
    totals = report["totals"]
    text = "-" if totals["text_tokens"] is None else str(totals["text_tokens"])
    print(
        f"{'total':33s} {totals['records']:8d} {totals['kept']:8d} {1:7.3f} {totals['images']:7d} "
        f"{totals['image_tokens']:11d} {text:>11s}"
    )
    if totals["bad"]:
        print(f"unreadable records among the kept ones: {totals['bad']}")
    return 0
