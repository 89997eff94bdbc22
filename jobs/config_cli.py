"""`sphinxx config`: show a resolved run config, or print its JSON/OpenAPI schema.

sphinxx config show debug train.lr=1e-4          # a preset plus dotlist overrides
sphinxx config show my-run.yaml --json            # a file (it may name a `preset:`)
sphinxx config schema                             # the schema the CRDs embed
sphinxx config presets
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from sphinxx.schema.run import ConfigError, json_schema, load_config, preset_names, to_dict, to_yaml


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="show resolved run configs and their schema")
    parser.set_defaults(group_parser=parser)
    sub = parser.add_subparsers(metavar="SUBCOMMAND")

    show = sub.add_parser("show", help="print the resolved config of a preset or YAML file plus overrides")
    show.add_argument(
        "source", metavar="PRESET_OR_FILE", help="preset name (see `sphinxx config presets`) or a YAML path"
    )
    show.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotlist overrides, e.g. train.lr=1e-4"
    )
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    show.set_defaults(func=_show)

    schema = sub.add_parser("schema", help="print the JSON/OpenAPI schema of a run config")
    schema.set_defaults(func=_schema)

    presets = sub.add_parser("presets", help="list the built-in presets")
    presets.set_defaults(func=_presets)


def _show(args: argparse.Namespace) -> int:
    is_file = args.source.endswith((".yaml", ".yml")) or os.path.sep in args.source
    try:
        cfg = load_config(
            preset=None if is_file else args.source,
            file=args.source if is_file else None,
            overrides=args.overrides,
        )
    except ConfigError as err:
        print(f"error: invalid config: {err}", file=sys.stderr)
        return 2
    print(
        json.dumps(to_dict(cfg), indent=2) if args.json else to_yaml(cfg), end="" if not args.json else "\n"
    )
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def _presets(args: argparse.Namespace) -> int:
    print("\n".join(preset_names()))
    return 0
