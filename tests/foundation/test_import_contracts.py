"""The layers (docs/architecture.md, "Layers") are enforced by import-linter, and the check bites."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VOCABULARY = {"schema", "sweep", "configs"}  # the sphinxx.jobs packages the operator may reach


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / ".ci/lint_imports.sh")], capture_output=True, text=True, timeout=300
    )


def test_contracts_hold() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_training_side_lists_name_every_module_outside_the_vocabulary() -> None:
    """Three contracts forbid `sphinxx.jobs` beyond the vocabulary module by module; a new module
    must be added there, or it would be silently allowed."""
    jobs = ROOT / "jobs"
    modules = {p.stem for p in jobs.glob("*.py") if p.stem != "__init__"}
    modules |= {p.parent.name for p in jobs.glob("*/__init__.py")}
    expected = {f"sphinxx.jobs.{m}" for m in modules - VOCABULARY}
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    lists = [c for c in contracts if "sphinxx.jobs.train" in c.get("forbidden_modules", [])]
    assert len(lists) == 3
    for contract in lists:
        listed = {m for m in contract["forbidden_modules"] if m.startswith("sphinxx.jobs.")}
        assert listed - {"sphinxx.jobs.sweep"} == expected, contract["name"]


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("storage/_violation.py", "import torch  # storage must stay torch-free\n"),
        ("operator/_violation.py", "import torch  # the operator must stay torch-free\n"),
        ("operator/_violation.py", "from sphinxx.jobs import loop  # training code\n"),
        ("jobs/sweep/_violation.py", "from sphinxx.model import llm  # the sweep core must not train\n"),
        ("jobs/schema/_violation.py", "from sphinxx.jobs.sweep import points  # the schema is the bottom\n"),
        ("jobs/_violation.py", "from sphinxx.operator import names  # nothing imports the operator\n"),
        ("model/_violation.py", "from sphinxx.jobs import train  # model sees only the vocabulary\n"),
    ],
    ids=["storage-torch", "operator-torch", "operator-loop", "sweep-model", "schema-sweep", "jobs-operator", "model-train"],
)
def test_a_forbidden_import_breaks_the_build(tmp_path: Path, module: str, line: str) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(
        ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "build", "__pycache__", ".demo", ".hypothesis")
    )
    (copy / ".venv").symlink_to(ROOT / ".venv")
    (copy / module).write_text(line)
    result = _lint(copy)
    dotted = "sphinxx." + module.removesuffix(".py").replace("/", ".")
    for folder, package in (("storage", "storage"), ("operator", "operator"), ("jobs", "jobs"), ("model", "model")):
        dotted = dotted.replace(f"sphinxx.{folder}.", f"sphinxx.{package}.")
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and dotted in result.stdout, result.stdout[-2000:]


def test_every_package_folder_is_installed() -> None:
    import tomllib

    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for folder in ("jobs", "model", "storage", "operator"):
        name = f"sphinxx.{folder}"
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            assert ".".join((name, *parts)) in packages, f"{init.parent} is missing from [tool.setuptools] packages"
