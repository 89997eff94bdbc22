"""The pre-commit hooks are the steps of `make lint`, and pre-commit runs them.

`.pre-commit-config.yaml` holds local hooks only (no hook repository is fetched: this machine
reaches no network but the package registries), each one command of the Makefile's `lint` target.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PRE_COMMIT = ROOT / ".venv" / "bin" / "pre-commit"


def _lint_steps() -> list[str]:
    """The commands of the Makefile's `lint` recipe, `$(BIN)/` spelled out as `.venv/bin/`."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe, "the Makefile has no lint target"
    return [line.strip().replace("$(BIN)/", ".venv/bin/") for line in recipe.group(1).splitlines()]


def _hooks() -> list[dict]:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    return [hook for repo in config["repos"] for hook in repo["hooks"]]


def test_the_hooks_are_the_lint_steps_in_order() -> None:
    hooks = _hooks()
    assert [h["entry"] for h in hooks] == _lint_steps()
    for hook in hooks:  # the whole tree, every time: the contracts and mypy need it
        assert hook["language"] == "system" and hook["pass_filenames"] is False and hook["always_run"] is True


def test_pre_commit_accepts_the_config() -> None:
    result = subprocess.run(
        [str(PRE_COMMIT), "validate-config", ".pre-commit-config.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_hook_fails_a_commit_that_breaks_the_lint(tmp_path: Path) -> None:
    """In a scratch repository: the ruff hook passes on clean code and fails on an unused import."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / ".venv").symlink_to(ROOT / ".venv")
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks["repos"][0]["hooks"] = [h for h in hooks["repos"][0]["hooks"] if h["id"] == "ruff-check"]
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump(hooks))
    (repo / "ok.py").write_text("x = 1\n")
    git = shutil.which("git")
    assert git
    for args in (["init", "-q"], ["add", "."]):
        subprocess.run([git, *args], cwd=repo, check=True)
    env = {"PRE_COMMIT_HOME": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run(
        [str(PRE_COMMIT), "run", "--all-files"], cwd=repo, capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (repo / "bad.py").write_text("import os\n")
    subprocess.run([git, "add", "."], cwd=repo, check=True)
    bad = subprocess.run(
        [str(PRE_COMMIT), "run", "--all-files"], cwd=repo, capture_output=True, text=True, env=env
    )
    assert bad.returncode != 0 and "F401" in bad.stdout, bad.stdout + bad.stderr
