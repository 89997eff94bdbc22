"""The `sphinxx` command line, run as a user would (a subprocess of the installed script)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SPHINXX = str(Path(sys.executable).parent / "sphinxx")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SPHINXX, *args], capture_output=True, text=True, timeout=120)


def test_config_show_prints_resolved_yaml() -> None:
    result = run("config", "show", "debug", "train.lr=0.125")
    assert result.returncode == 0, result.stderr
    assert "lr: 0.125" in result.stdout and "flavor: debug" in result.stdout


def test_config_show_json() -> None:
    result = run("config", "show", "debug", "--json")
    assert json.loads(result.stdout)["model"]["flavor"] == "debug"


def test_config_show_bad_value_exits_nonzero_naming_the_field() -> None:
    result = run("config", "show", "debug", "train.lr=abc")
    assert result.returncode != 0
    assert "train.lr" in result.stderr


def test_config_schema_is_json() -> None:
    result = run("config", "schema")
    assert json.loads(result.stdout)["properties"]["parallel"]["type"] == "object"


def _leaf_commands() -> list[list[str]]:
    from sphinxx.cli import build_parser

    leaves: list[list[str]] = []

    def walk(parser, prefix):
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    leaves.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return leaves


@pytest.mark.parametrize("command", _leaf_commands(), ids=" ".join)
def test_every_subcommand_has_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: sphinxx" in result.stdout


def test_overrides_may_follow_options() -> None:
    """`sphinxx sweep run FILE --local train.lr=5e-4`: argparse alone leaves the override over."""
    from sphinxx.cli import build_parser, parse

    args = parse(build_parser(), ["sweep", "run", "f.yaml", "--local", "--workdir", "/w", "train.lr=5e-4"])
    assert (args.file, args.workdir, args.overrides) == ("f.yaml", "/w", ["train.lr=5e-4"])
    with pytest.raises(SystemExit):
        parse(
            build_parser(), ["sweep", "run", "f.yaml", "--local", "--wrkdir", "/w"]
        )  # a typo stays an error
    with pytest.raises(SystemExit):
        parse(build_parser(), ["ckpt", "ls", "s3://b/r", "extra=1"])  # no overrides there
