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
