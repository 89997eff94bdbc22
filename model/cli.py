"""`sphinxx model ...`: list flavors and convert base LLM weights.

    sphinxx model list                                   # flavor names, paper names, canvases
    sphinxx model convert --from hf /data/TinyLlama-1.1B --flavor tinyllama-1.1b --out /data/tiny-sx
    sphinxx model info tinyllama-1.1b --json --image 1000x500                            # jobs/info_cli.py
    sphinxx model export s3://bucket/sweeps/sweep-a/run-1 /data/eval/run-1 --step 2000   # jobs/export_cli.py

Registration imports nothing heavy; torch and transformers load inside the handlers. Paths for
`convert` are local: `sphinxx.model` never talks to object stores (stage S3 objects first).
`info` takes its memory defaults from the flavor's preset run config and `export` reads
checkpoints from the store, neither of which the model layer reads, so both live on the training
side (`jobs/info_cli.py`, `jobs/export_cli.py`) and join this group through `sphinxx.cli.SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import sys

from sphinxx.schema.flavors import FLAVORS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="SPHINX-X model flavors: sizes, token counts, conversion")
    parser.set_defaults(group_parser=parser)
    sub = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND")

    p = sub.add_parser("list", help="list the SPHINX-X flavors")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("convert", help="convert a base LLM checkpoint into sphinxx's layout")
    p.add_argument("src", help="local directory of the source checkpoint")
    p.add_argument("--from", dest="source_format", choices=["hf"], default="hf", help="source format")
    p.add_argument("--flavor", required=True, help="LLM flavor the checkpoint is (tinyllama-1.1b, ...)")
    p.add_argument("--out", required=True, help="new local output directory")
    p.add_argument(
        "--dtype", choices=["bf16", "fp16", "fp32"], default=None, help="cast tensors (default: keep)"
    )
    p.set_defaults(func=_cmd_convert)


def _cmd_list(args: argparse.Namespace) -> int:
    from sphinxx.model.anyres import CELL_SIZE  # anyres imports torch: not at `sphinxx --help`

    for name, f in FLAVORS.items():
        canvas = f.grid * CELL_SIZE
        kind = f"moe {f.num_experts}x top-{f.llm.top_k}" if f.is_moe else "dense"
        print(f"{name:16s} {f.paper_name or '-':16s} {kind:14s} vision={f.vision} canvas={canvas}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    # torch and the converter load when the command runs, not at `sphinxx --help`.
    import torch

    from sphinxx.model.convert import convert_hf

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(args.dtype or "")

    def progress(done: int, total: int, name: str) -> None:
        if done == total or done % 50 == 0:
            print(f"  {done}/{total} {name}", file=sys.stderr)

    try:
        result = convert_hf(args.src, args.flavor, args.out, dtype=dtype, progress=progress)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, default=str))
    return 0
