"""`make test` runs the suite as two concurrent pytest lanes (.ci/test_lanes.sh): every test
collected exactly once, in one lane or the other, and the script's exit status is the lanes'."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "test_lanes.sh"
NODE = re.compile(r"^tests/\S+::\S+", re.M)


def _lanes(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BIN": str(Path(sys.executable).parent), "LANE_LOG": str(tmp_path / "lane.log")}
    return subprocess.run(
        ["bash", str(SCRIPT), "-p", "no:cacheprovider", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_two_lanes_collect_every_test_exactly_once(tmp_path: Path) -> None:
    done = _lanes(tmp_path, "--collect-only", "-q")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    training = NODE.findall((tmp_path / "lane.log").read_text())
    rest = NODE.findall(done.stdout.split("=== training lane")[0])
    assert training and rest
    assert not set(training) & set(rest), sorted(set(training) & set(rest))
    # Every test file of the suite is collected, in one lane or split between the two by test.
    files = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")}
    collected = {n.split("::")[0] for n in training + rest}
    assert collected == files, sorted(files ^ collected)
    assert all(n.startswith(("tests/e2e/", "tests/jobs/test_train.py::")) for n in training)
    split = {n for n in training + rest if n.startswith("tests/jobs/test_train.py::")}
    assert split & set(training) and split & set(rest)  # the one file split by test


@pytest.mark.parametrize(
    ("training", "rest", "expected"),
    [(0, 0, 0), (1, 0, 1), (0, 1, 1), (2, 0, 2), (5, 0, 0), (0, 5, 0), (5, 5, 5), (5, 1, 1)],
)
def test_the_exit_status_is_the_first_failing_lanes(
    tmp_path: Path, training: int, rest: int, expected: int
) -> None:
    # Only the exit codes are under test here, so each lane is a one-line `pytest` that exits with
    # the status given for it (the lane with tests/e2e on its command line is the training lane).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pytest"
    fake.write_text(f'#!/bin/sh\ncase " $* " in *" tests/e2e "*) exit {training};; *) exit {rest};; esac\n')
    fake.chmod(0o755)
    env = {**os.environ, "BIN": str(bin_dir), "LANE_LOG": str(tmp_path / "lane.log")}
    done = subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == expected, done.stdout
    assert f"rest rc={rest}" in done.stdout and f"training rc={training}" in done.stdout
