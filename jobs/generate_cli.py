"""`sphinxx generate`: answers from a committed checkpoint, for an image and a question or a JSONL file.

    sphinxx generate s3://bucket/sweeps/sweep-a/run-1 --image cat.png --prompt "What animal is this?"
    sphinxx generate file:///data/runs/run-1 --step 2000 --requests requests.jsonl --json
    sphinxx generate /data/runs/run-1 --prompt "Say hello." --temperature 0.7 --top-p 0.9 --seed 1

Why a jobs-side group: it reads the checkpoint store (`sphinxx.storage`), which `sphinxx.model`
may not import (docs/architecture.md, "Layers"). Registration is cheap; torch and transformers
load in the handler. Exit codes as `sphinxx model export`: 0 ok, 1 storage problem (one line
naming the URI), 2 usage error (a bad request, image or setting).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sphinxx.storage import StorageOptions


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="answer questions about images with a committed checkpoint (greedy or sampled)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT",
        help="run root <prefix>/<run-id> or a step folder .../checkpoints/step-N (s3://, file:// or a path)",
    )  # fmt: skip
    p.add_argument("--step", type=int, metavar="N", help="committed step to load (default: the latest)")
    p.add_argument("--image", metavar="PATH_OR_URI", help="the image the question is about (default: none)")
    p.add_argument("--prompt", metavar="TEXT", help="the question")
    p.add_argument(
        "--requests", metavar="FILE",
        help='JSONL, one request a line: {"prompt": ..., "image": PATH_OR_URI, "id": ...}',
    )  # fmt: skip
    p.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="answer length limit (128)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="sampling seed (reproducible draws)")
    p.add_argument(
        "--stop", action="append", metavar="TEXT",
        help='stop string, repeatable (default "###", the template\'s turn separator)',
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="requests per forward (8)")
    p.add_argument("--tokenizer", metavar="URI", help="tokenizer files (default: the run's data.tokenizer)")
    p.add_argument(
        "--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS)"
    )
    p.add_argument("--region", help="S3 region (default: $AWS_REGION / $AWS_DEFAULT_REGION)")
    p.add_argument("--profile", help="named AWS profile for credentials (default: the environment)")
    p.add_argument("--json", action="store_true", help="print one JSON object per answer")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    # torch, transformers and the storage client load when the command runs, not at `sphinxx --help`.
    from sphinxx.storage import StorageOptions
    from sphinxx.storage.cli import at_boundary

    options = StorageOptions(endpoint_url=args.endpoint_url, region=args.region, profile=args.profile)

    def generate() -> int:
        for result in _run(args, options):
            print(json.dumps(result, sort_keys=True) if args.json else result["answer"])
        return 0

    # a ValueError is about the requests (a prompt, an image, a JSONL line), not the checkpoint
    return at_boundary(generate, args.checkpoint, options.resolved_endpoint(), name_uri=False)


def _run(args: argparse.Namespace, options: StorageOptions) -> list[dict[str, Any]]:
    from sphinxx.jobs.generate import DEFAULT_STOP, Request, load_generator, read_requests
    from sphinxx.model.generate import GenerationConfig

    if (args.requests is None) == (args.prompt is None):
        raise ValueError("give --prompt TEXT (with --image PATH_OR_URI if any) or --requests FILE")
    if args.requests is not None and args.image is not None:
        raise ValueError("--image goes with --prompt; in --requests each line names its own image")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        seed=args.seed, stop_strings=tuple(args.stop or (DEFAULT_STOP,)),
    )  # fmt: skip
    requests = read_requests(args.requests) if args.requests else [Request(args.prompt, args.image)]
    generator = load_generator(args.checkpoint, step=args.step, options=options, tokenizer=args.tokenizer)
    return generator.answer(requests, config, batch_size=args.batch_size)
