"""The sample audit trail: one JSON line per step and rank, only when SPHINXX_SAMPLE_TRACE is set."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest


def test_each_step_is_one_flushed_line_per_rank(tmp_path) -> None:
    from sphinxx.jobs.audit import SampleTrace
    from sphinxx.jobs.context import Worker

    trace = SampleTrace(str(tmp_path / "trace"), Worker(rank=1, world_size=2, attempt=3))
    group = [SimpleNamespace(positions=[4, 6]), SimpleNamespace(positions=[8])]
    trace.record(7, group)
    (path,) = (tmp_path / "trace").iterdir()
    assert path.name == f"rank1-attempt3-pid{os.getpid()}.jsonl"
    line = json.loads(path.read_text())  # already on disk: flushed at once
    assert line == {
        "step": 7,
        "rank": 1,
        "world_size": 2,
        "attempt": 3,
        "pid": os.getpid(),
        "positions": [4, 6, 8],
    }


def test_off_without_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from sphinxx.jobs.audit import SampleTrace
    from sphinxx.jobs.context import Worker

    monkeypatch.delenv("SPHINXX_SAMPLE_TRACE", raising=False)
    trace = SampleTrace.from_env(Worker())
    assert trace.file is None
    trace.record(0, [SimpleNamespace(positions=[1])])  # a no-op
