"""The dependency direction of architecture.md is enforced by import-linter, and the check bites."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / ".ci/lint_imports.sh")], capture_output=True, text=True, timeout=300
    )


def test_contracts_hold() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_forbidden_import_breaks_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(
        ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "build", "__pycache__", ".demo")
    )
    (copy / ".venv").symlink_to(ROOT / ".venv")
    (copy / "storage" / "_violation.py").write_text("import torch  # storage must stay torch-free\n")
    result = _lint(copy)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "sphinxx.storage._violation" in result.stdout


# Not training code: the vocabulary, the sweep core, and the preset YAMLs the vocabulary reads.
NOT_TRAINING_SIDE = {"schema", "sweep", "configs"}


def _jobs_modules() -> set[str]:
    jobs = ROOT / "jobs"
    modules = {p.stem for p in jobs.glob("*.py") if p.name != "__init__.py"}
    modules |= {p.parent.name for p in jobs.glob("*/__init__.py")}
    return {f"sphinxx.jobs.{m}" for m in modules - NOT_TRAINING_SIDE}


def test_every_training_side_list_names_exactly_the_modules_of_jobs() -> None:
    """A module added to (or removed from) jobs/ must be added to (removed from) each contract's list."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    lists = [c for c in contracts if "sphinxx.jobs.train" in c.get("forbidden_modules", [])]
    assert len(lists) == 3, [c["name"] for c in lists]
    excluded = {f"sphinxx.jobs.{m}" for m in NOT_TRAINING_SIDE}
    for contract in lists:
        named = {m for m in contract["forbidden_modules"] if m.startswith("sphinxx.jobs.")} - excluded
        assert named == _jobs_modules(), contract["name"]


def test_every_package_folder_is_installed() -> None:
    import tomllib

    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for folder in ("jobs", "model", "storage", "operator"):
        name = f"sphinxx.{folder}"
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            assert ".".join((name, *parts)) in packages, f"{init.parent} is missing from [tool.setuptools] packages"
