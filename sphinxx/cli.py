"""The `sphinxx` command line: one entry point, one subcommand group per area.

Run `sphinxx --help`. Each area owns its subcommands in its own package
(`sphinxx.<area>.cli`-style modules listed in COMMAND_GROUPS) and exposes
`register(subparsers)`, which adds one argparse sub-parser whose handlers set
`func`. Registration must stay cheap: heavy imports (torch, ray, kopf) happen
inside the handler, so `sphinxx --help` and `sphinxx config ...` stay fast and
work on a torch-free install.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sphinxx import __version__

# (group name, module providing register(subparsers)) in the order shown by --help.
COMMAND_GROUPS: list[tuple[str, str]] = [
    ("config", "sphinxx.jobs.config_cli"),
    ("ckpt", "sphinxx.storage.cli"),
    ("model", "sphinxx.model.cli"),
    ("data", "sphinxx.jobs.data.cli"),
    ("generate", "sphinxx.jobs.generate_cli"),
    ("sweep", "sphinxx.jobs.sweep_cli"),
    ("validate", "sphinxx.jobs.validate_cli"),
    ("eval", "sphinxx.jobs.eval_cli"),
    ("operator", "sphinxx.operator.cli"),
    ("doctor", "sphinxx.operator.doctor_cli"),
]

# Subcommands that a group's own package may not import (docs/architecture.md, "Layers"):
# `sphinxx model info` reads presets and run configs and `sphinxx model export` the checkpoint
# store, neither of which `sphinxx.model` imports. Each (group, module) module's
# `register(group_subcommands)` adds its sub-parsers to that group.
SUBCOMMANDS: list[tuple[str, str]] = [
    ("model", "sphinxx.jobs.info_cli"),
    ("model", "sphinxx.jobs.export_cli"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sphinxx",
        description=(
            "Scaling sweeps of the SPHINX-X multimodal LLM family (Ray Train + DeepSpeed on Kubernetes)."
        ),
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="group", metavar="COMMAND")
    for _name, module in COMMAND_GROUPS:
        importlib.import_module(module).register(subparsers)
    for group, module in SUBCOMMANDS:
        group_parser = subparsers.choices[group]
        commands = next(a for a in group_parser._actions if isinstance(a, argparse._SubParsersAction))
        importlib.import_module(module).register(commands)
    return parser


def _version() -> str:
    return f"sphinxx {__version__}"


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting KEY=VALUE overrides follow options too (`sweep run FILE --local train.lr=1e-4`).

    argparse consumes a command's positionals where they first appear, so overrides written after
    an option are left over; they are added to the command's `overrides` (anything else left over
    is the usual error).
    """
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    func = getattr(args, "func", None)
    if func is None:
        # A group without a subcommand: show that group's help (or the top-level one).
        getattr(args, "group_parser", parser).print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
