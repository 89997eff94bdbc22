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

# (group name, module providing register(subparsers)) in the order shown by --help.
COMMAND_GROUPS: list[tuple[str, str]] = [
    ("config", "sphinxx.jobs.config_cli"),
    ("ckpt", "sphinxx.storage.cli"),
    ("model", "sphinxx.model.cli"),
    ("data", "sphinxx.jobs.data.cli"),
    ("sweep", "sphinxx.jobs.sweep_cli"),
    ("operator", "sphinxx.operator.cli"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sphinxx",
        description="Scaling sweeps of the SPHINX-X multimodal LLM family (Ray Train + DeepSpeed on Kubernetes).",
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="group", metavar="COMMAND")
    for _name, module in COMMAND_GROUPS:
        importlib.import_module(module).register(subparsers)
    return parser


def _version() -> str:
    from sphinxx import __version__

    return f"sphinxx {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
