"""The layers (docs/architecture.md, "Layers") are enforced by import-linter, and the check bites."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / ".ci/lint_imports.sh")], capture_output=True, text=True, timeout=300
    )


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "__pycache__", ".demo", ".micro", ".hypothesis"
        ),
    )
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


def _dotted(module: str) -> str:
    """`jobs/x.py` and `sphinxx/schema/x.py` -> `sphinxx.jobs.x`, `sphinxx.schema.x`."""
    name = module.removesuffix(".py").replace("/", ".")
    return name if name.startswith("sphinxx.") else "sphinxx." + name


def test_contracts_hold() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


# One planted upward (or sideways) import per rule of the layer diagram; the lint must fail and
# name the planted module.
VIOLATIONS = {
    "model-jobs": ("model/_violation.py", "from sphinxx.jobs import loop  # the model is below the job\n"),
    "schema-sweep": (
        "sphinxx/schema/_violation.py",
        "from sphinxx.sweep import points  # the schema is the bottom\n",
    ),
    "storage-model": (
        "storage/_violation.py",
        "from sphinxx.model import llm  # storage is beside the model\n",
    ),
    "storage-torch": ("storage/_violation.py", "import torch  # storage must stay torch-free\n"),
    "sweep-model": (
        "sphinxx/sweep/_violation.py",
        "from sphinxx.model import llm  # the sweep core must not train\n",
    ),
    "sweep-torch": ("sphinxx/sweep/_violation.py", "import torch  # the sweep core is torch-free\n"),
    "schema-numpy": ("sphinxx/schema/_violation.py", "import numpy  # the base install has no numpy\n"),
    "evals-storage": (
        "sphinxx/evals/_violation.py",
        "from sphinxx.storage import uri  # the benchmarks are below the parts\n",
    ),
    "evals-s3fs": (
        "sphinxx/evals/_violation.py",
        "import s3fs  # the job reads benchmark files, not the metrics\n",
    ),
    "jobs-operator": (
        "jobs/_violation.py",
        "from sphinxx.operator import names  # nothing imports the operator\n",
    ),
    "model-operator": (
        "model/_violation.py",
        "from sphinxx.operator import names  # nothing imports the operator\n",
    ),
    "operator-jobs": ("operator/_violation.py", "from sphinxx.jobs import loop  # training code\n"),
    "operator-model": (
        "operator/_violation.py",
        "from sphinxx.model import llm  # the operator never builds models\n",
    ),
    "operator-torch": ("operator/_violation.py", "import torch  # the operator must stay torch-free\n"),
    "loader-storage-client": (
        "model/exported.py",
        "import fsspec  # the standalone loader runs without the storage stack\n",
    ),
    "cli-operator": ("sphinxx/_violation.py", "from sphinxx.operator import names  # reached by name only\n"),
}


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_a_forbidden_import_breaks_the_build(tmp_path: Path, case: str) -> None:
    module, line = VIOLATIONS[case]
    copy = _copy(tmp_path)
    (copy / module).write_text(line)
    if case == "cli-operator":  # a module of the root package outside the layers: like the CLI
        contracts = copy / "pyproject.toml"
        text = contracts.read_text()
        text = text.replace(
            'exhaustive_ignores = ["cli", "__main__"]',
            'exhaustive_ignores = ["cli", "__main__", "_violation"]',
        )
        text = text.replace(
            'source_modules = ["sphinxx.cli", "sphinxx.__main__"]',
            'source_modules = ["sphinxx.cli", "sphinxx.__main__", "sphinxx._violation"]',
        )
        contracts.write_text(text)
    result = _lint(copy)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and _dotted(module) in result.stdout, result.stdout[-2000:]


# An import cycle planted in storage: the lint must fail and say so.
CYCLES = {
    "siblings": (
        "from sphinxx.storage import layout  # layout imports uri\n",
        "No cycles are allowed in sphinxx.storage",
    ),
    "through the package": (
        "from sphinxx.storage import StorageError  # the package's __init__ imports uri\n",
        "sphinxx.storage.uri is not allowed to import sphinxx.storage",
    ),
}


@pytest.mark.parametrize("case", list(CYCLES))
def test_an_import_cycle_in_storage_breaks_the_build(tmp_path: Path, case: str) -> None:
    line, named = CYCLES[case]
    copy = _copy(tmp_path)
    module = copy / "storage" / "uri.py"
    module.write_text(module.read_text() + line)
    result = _lint(copy)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and named in result.stdout, result.stdout[-2000:]


def test_a_new_module_in_its_layer_needs_no_contract_edit(tmp_path: Path) -> None:
    """New modules import what their layer may: the lint passes with pyproject.toml untouched."""
    copy = _copy(tmp_path)
    (copy / "jobs" / "_new_step.py").write_text(
        "from sphinxx.model import llm\nfrom sphinxx.schema import run\nfrom sphinxx.storage import uri\n"
        "from sphinxx.sweep import points\n"
    )
    (copy / "sphinxx" / "sweep" / "_new_fit.py").write_text("from sphinxx.schema import fields\n")
    (copy / "storage" / "_new_store.py").write_text("from sphinxx.schema import fields\n")
    (copy / "operator" / "_new_view.py").write_text(
        "from sphinxx.storage import uri\nfrom sphinxx.sweep import results\n"
    )
    result = _lint(copy)
    assert result.returncode == 0, result.stdout[-2000:]


def test_a_new_package_must_take_a_layer(tmp_path: Path) -> None:
    """`exhaustive`: a package added under sphinxx/ without a place in the diagram fails the lint."""
    copy = _copy(tmp_path)
    (copy / "sphinxx" / "newlayer").mkdir()
    (copy / "sphinxx" / "newlayer" / "__init__.py").write_text("")
    result = _lint(copy)
    assert result.returncode != 0
    assert "newlayer" in result.stdout, result.stdout[-2000:]


def test_every_package_folder_is_installed() -> None:
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"jobs": "sphinxx.jobs", "model": "sphinxx.model", "storage": "sphinxx.storage",
               "operator": "sphinxx.operator", "sphinxx": "sphinxx"}  # fmt: skip
    for folder, name in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            parts = init.parent.relative_to(ROOT / folder).parts
            assert ".".join((name, *parts)) in packages, (
                f"{init.parent} is missing from [tool.setuptools] packages"
            )
