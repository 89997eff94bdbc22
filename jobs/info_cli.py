"""`sphinxx model info FLAVOR`: parameters, visual tokens, FLOPs, per-rank memory, checkpoint size.

    sphinxx model info tinyllama-1.1b
    sphinxx model info mixtral-8x7b --json --image 1000x500 --world-size 16 --ep-size 8

Why a jobs-side module in the `model` group: the memory estimate's defaults are the flavor's
preset run config (`jobs.run_memory.flavor_run_config`), and the model layer never reads run
configs or presets (docs/architecture.md, "Layers"), so this module adds its subcommand to the
group `sphinxx.model.cli` registers (`sphinxx.cli.SUBCOMMANDS`). Registration is cheap; torch
loads in the handler.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from sphinxx.jobs.checkpoint_size import describe


def _image_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1000x500, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return width, height


def register(model_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = model_commands.add_parser(
        "info", help="parameters, visual tokens and FLOPs of a flavor (meta device, no weights)"
    )
    p.add_argument("flavor", help="sweep name (tinyllama-1.1b, ...) or paper name (sphinx-tiny, ...)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--image", type=_image_size, metavar="WxH", help="also report this image's tokens and views"
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="sequence length for the attention FLOPs term and the activations",
    )
    memory = p.add_argument_group(
        "per-rank memory estimate",
        "unset flags take the flavor's preset (sphinxx/schema/presets/<flavor>.yaml) or the schema defaults",
    )
    memory.add_argument("--world-size", type=int, help="ranks (default: the preset's parallel.min_workers)")
    memory.add_argument("--zero-stage", type=int, choices=[0, 1, 2], help="DeepSpeed ZeRO stage")
    memory.add_argument("--ep-size", type=int, help="expert-parallel group size (MoE flavors)")
    memory.add_argument("--micro-batch", type=int, help="sequences per forward on a rank")
    memory.add_argument("--precision", choices=["bf16", "fp32"], help="training precision")
    memory.add_argument(
        "--activation-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "recompute each decoder block in backward "
            "(what-if: flavors of 7B and larger always do in the job)"
        ),
    )
    memory.add_argument(
        "--images-per-sample",
        type=int,
        default=1,
        help="square images per sequence, every view kept (default 1)",
    )
    p.add_argument(
        "--upload-gb-per-s",
        type=float,
        default=1.0,
        help="each rank's bandwidth to the checkpoint store, for the upload time of a save (default 1.0)",
    )
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    # torch: loaded when the command runs, not at `sphinxx --help`
    from sphinxx.jobs.checkpoint_size import checkpoint_size
    from sphinxx.model.info import model_info

    try:
        info = model_info(args.flavor, image=args.image, seq_len=args.seq_len)
        info["memory"] = _memory(args)
        info["checkpoint"] = checkpoint_size(info["memory"], args.upload_gb_per_s)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info))
        return 0
    p = info["params"]
    print(
        f"{info['flavor']} ({info['paper_name'] or 'debug'}): "
        f"llm {info['llm_flavor']}, vision {info['vision']}"
    )
    print(
        f"  canvas {info['canvas']} ({info['grid']}x{info['grid']} cells), "
        f"skip token {info['use_skip_token']}"
    )
    print(f"  params total {p['total']:,}  trainable {p['trainable']:,}  frozen {p['frozen']:,}")
    print(
        f"    llm {p['llm']:,} (active {p['llm_active']:,})  projector {p['projector']:,}  tags {p['tags']:,}"
    )
    print(f"    convnext {p['convnext']:,}  dinov2 {p['dinov2']:,}")
    tokens = ", ".join(f"{k} {v}" for k, v in info["visual_tokens"].items())
    print(f"  visual tokens per image: {tokens}")
    f = info["flops"]
    print(f"  LLM training FLOPs/token at T={f['seq_len']}: {f['llm_train_per_token']:.3e} ({f['formula']})")
    print(f"  vision forward FLOPs per view: {f['vision_forward_per_view']:.3e}")
    if "image" in info:
        im = info["image"]
        print(
            f"  image {im['width']}x{im['height']}: {im['visual_tokens']} tokens, "
            f"{im['real_views']} real views, {im['skipped_views']} skipped"
        )
    print_memory(info["memory"])
    print("  " + describe(info["checkpoint"]))
    return 0


def _memory(args: argparse.Namespace) -> dict:
    """The per-rank memory estimate under the preset's setup with the flags applied."""
    from sphinxx.jobs.run_memory import flavor_run_config, run_memory, setup_from_run  # torch, as above

    cfg = flavor_run_config(args.flavor)
    setup = setup_from_run(cfg, images_per_sample=args.images_per_sample)
    chosen = {
        "world_size": args.world_size,
        "zero_stage": args.zero_stage,
        "ep_size": args.ep_size,
        "micro_batch": args.micro_batch,
        "precision": args.precision,
        "seq_len": args.seq_len,
        "activation_checkpointing": args.activation_checkpointing,
    }
    setup = replace(setup, **{k: v for k, v in chosen.items() if v is not None})
    if args.seq_len is not None:
        setup = replace(setup, image_tokens=min(setup.image_tokens, args.seq_len))
    return run_memory(cfg, setup)


def print_memory(memory: dict, indent: str = "  ") -> None:
    """The estimate's components in GiB and its assumptions (shared with `sphinxx sweep plan --cost`)."""
    s, gib = memory["setup"], memory["gib"]
    print(
        f"{indent}per-rank memory {gib['total']:.2f} GiB (world {s['world_size']}, ZeRO-{s['zero_stage']}, "
        f"EP {s['ep_size']}, {s['precision']}, micro-batch {s['micro_batch']} x {s['seq_len']}, "
        f"checkpointing {'on' if s['activation_checkpointing'] else 'off'})"
    )
    parts = ("weights", "gradients", "optimizer_states", "reduce_bucket", "activations", "frozen_towers")
    print(indent + "  " + "  ".join(f"{k} {gib[k]:.2f}" for k in parts))
    for line in memory["assumptions"]:
        print(f"{indent}  - {line}")
