"""`make test` runs the suite as three concurrent pytest lanes (.ci/test_lanes.sh): every test
collected exactly once, in one lane, and the script's exit status is the lanes'."""

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


def _lanes(tmp_path: Path, bin_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BIN": str(bin_dir), "LANE_LOG_DIR": str(tmp_path)}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


LANES = ("e2e", "training")


def test_the_lanes_collect_every_test_exactly_once(tmp_path: Path) -> None:
    done = _lanes(tmp_path, Path(sys.executable).parent, "-p", "no:cacheprovider", "--collect-only", "-q")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    named = {lane: NODE.findall((tmp_path / f"test-lane-{lane}.log").read_text()) for lane in LANES}
    rest = NODE.findall(done.stdout.split("=== e2e lane")[0])
    assert rest and all(named.values())
    lanes = [set(rest), *(set(nodes) for nodes in named.values())]
    assert all(not a & b for i, a in enumerate(lanes) for b in lanes[i + 1 :])
    # Every test file of the suite is collected, each in exactly one lane.
    files = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")}
    by_lane = [{n.split("::")[0] for n in lane} for lane in lanes]
    assert set().union(*by_lane) == files, sorted(files ^ set().union(*by_lane))
    assert sum(len(f) for f in by_lane) == len(files)
    assert all(n.startswith(("tests/e2e/", "tests/jobs/")) for n in named["e2e"])
    assert any(n.startswith("tests/e2e/test_tiny_sweep.py") for n in named["e2e"])
    assert all(n.startswith(("tests/jobs/", "tests/moe/test_gpu_scripts.py")) for n in named["training"])


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ((0, 0, 0), 0),
        ((1, 0, 0), 1),
        ((0, 1, 0), 1),
        ((0, 0, 1), 1),
        ((0, 2, 0), 2),
        ((5, 0, 0), 0),
        ((0, 5, 5), 0),
        ((5, 5, 5), 5),
        ((5, 1, 3), 3),  # the rest lane is printed (and counted) first
    ],
)
def test_the_exit_status_is_a_failing_lanes(tmp_path: Path, codes: tuple[int, ...], expected: int) -> None:
    # Only the exit codes are under test here, so each lane is a one-line `pytest` that exits with
    # the status given for it (recognised by the first path on its command line); codes are for
    # e2e, training and the rest.
    e2e, training, rest = codes
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pytest"
    fake.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" tests/e2e "*) exit {e2e};; *" tests/jobs/test_train.py "*) exit {training};; '
        f"*) exit {rest};; esac\n"
    )
    fake.chmod(0o755)
    done = _lanes(tmp_path, bin_dir)
    assert done.returncode == expected, done.stdout
    for lane, code in zip(("e2e", "training", "rest"), codes, strict=True):
        assert f"{lane} rc={code}" in done.stdout
