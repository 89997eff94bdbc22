"""`sphinxx model export`: a committed checkpoint -> one folder with the whole multimodal model.

The decoder in it loads with `AutoModelForCausalLM`; all of it (towers, projector, tags, image
processor, template, tokenizer) with the standalone loader `sphinxx.model.exported`.

    sphinxx model export s3://bucket/sweeps/sweep-a/run-1 /data/eval/run-1              # latest committed
    sphinxx model export s3://bucket/sweeps/sweep-a/run-1/checkpoints/step-000002000 /data/eval/run-1-2000
    sphinxx model export file:///data/runs/run-1 /data/eval/run-1 --step 2000 --dtype bf16

Why a jobs-side module in the `model` group: the command reads the store (`sphinxx.storage`),
which `sphinxx.model` may not import (docs/architecture.md, "Layers"), so this module adds its
subcommand to the group `sphinxx.model.cli` registers (`sphinxx.cli.SUBCOMMANDS`). Registration is
cheap; torch and transformers load in the handler. Exit codes as `sphinxx ckpt`: 0 ok, 1 storage
problem (one line naming the URI), 2 usage error.
"""

from __future__ import annotations

import argparse
import json


def register(model_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = model_commands.add_parser(
        "export",
        help="a committed checkpoint as one folder: HF decoder, tokenizer, towers, projector, manifest",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT",
        help="run root <prefix>/<run-id> or a step folder .../checkpoints/step-N (s3://, file:// or a path)",
    )  # fmt: skip
    p.add_argument("out", metavar="OUT", help="new local folder to write")
    p.add_argument("--step", type=int, metavar="N", help="committed step to export (default: the latest)")
    p.add_argument(
        "--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="cast the weights (default: keep)"
    )
    p.add_argument(
        "--tokenizer", metavar="URI", help="tokenizer files to write (default: the run's data.tokenizer)"
    )
    p.add_argument("--no-tokenizer", action="store_true", help="write no tokenizer files")
    p.add_argument(
        "--max-shard-size", type=float, default=5.0, metavar="GB",
        help="largest safetensors shard in GiB (default 5); one shard is written as model.safetensors",
    )  # fmt: skip
    p.add_argument(
        "--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS)"
    )
    p.add_argument("--region", help="S3 region (default: $AWS_REGION / $AWS_DEFAULT_REGION)")
    p.add_argument("--profile", help="named AWS profile for credentials (default: the environment)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    # torch, transformers and the storage client load when the command runs, not at `sphinxx --help`.
    import torch

    from sphinxx.jobs.export import export_checkpoint
    from sphinxx.storage import StorageOptions
    from sphinxx.storage.cli import at_boundary

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(args.dtype or "")
    options = StorageOptions(endpoint_url=args.endpoint_url, region=args.region, profile=args.profile)

    def export() -> int:
        summary = export_checkpoint(
            args.checkpoint, args.out, step=args.step, options=options, tokenizer=args.tokenizer,
            with_tokenizer=not args.no_tokenizer, dtype=dtype,
            max_shard_bytes=int(args.max_shard_size * 2**30),
        )  # fmt: skip
        print(json.dumps(summary, sort_keys=True) if args.json else summary["out"])
        return 0

    return at_boundary(export, args.checkpoint, options.resolved_endpoint())
