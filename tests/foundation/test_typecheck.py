"""The gated packages type-check under mypy (.ci/typecheck.sh, part of `make lint`), and the check bites."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _typecheck(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / ".ci/typecheck.sh")], capture_output=True, text=True, timeout=300
    )


def test_gated_packages_type_check() -> None:
    result = _typecheck(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_a_type_error_in_storage_breaks_the_build_and_names_the_real_file(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(
        ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "build", "__pycache__", ".demo")
    )
    (copy / ".venv").symlink_to(ROOT / ".venv")
    # The lint step's mypy cache (valid by content hash at the copy's paths): only storage/uri.py
    # and what depends on it is checked again, seconds instead of a minute from cold.
    if (ROOT / "build" / "mypy-cache").is_dir():
        shutil.copytree(ROOT / "build" / "mypy-cache", copy / "build" / "mypy-cache")
    uri = copy / "storage" / "uri.py"
    uri.write_text(uri.read_text() + '\n\ndef _violation() -> int:\n    return "not an int"\n')
    line = uri.read_text().splitlines().index('    return "not an int"') + 1
    result = _typecheck(copy)
    assert result.returncode != 0, result.stdout + result.stderr
    # Clickable from the repo root: the real file, not the copy mypy ran on under build/.
    message = re.compile(rf"^storage/uri\.py:{line}: error: .*\[return-value\]$", re.M)
    assert message.search(result.stdout), result.stdout
    assert "build/" not in result.stdout and "sphinxx/storage/" not in result.stdout
