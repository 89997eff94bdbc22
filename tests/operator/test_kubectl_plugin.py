"""`kubectl sphinxx status`'s rows: what a point's own TrainingRun status says wins over the roll-up."""

from __future__ import annotations

from sphinxx.operator.kubectl_plugin import _point_cells

POINT = {"name": "s-debug-d50", "model": "debug", "dataFraction": 0.5, "phase": "Running", "attempt": 1}


def test_a_row_counts_preemptions_and_resizes_apart_from_attempts() -> None:
    live = {
        "phase": "Running",
        "attempt": 2,
        "preemptions": 3,
        "resizes": 1,
        "progress": {"step": 140, "loss": 2.5, "tokensPerSecond": 9000, "eta": "0:10:00"},
        "lastCheckpoint": {"step": 120, "uri": "s3://b/r/checkpoints/step-000000120"},
    }
    assert _point_cells(POINT, live) == [
        "s-debug-d50", "debug", 0.5, "Running", 2, 3, 1, 140, 2.5, 9000, "0:10:00",
        "s3://b/r/checkpoints/step-000000120",
    ]  # fmt: skip


def test_a_point_without_its_own_status_yet_shows_the_roll_up_and_zero_counts() -> None:
    row = _point_cells({**POINT, "step": 10, "loss": 3.0, "checkpoint": "s3://b/c"}, {})
    assert row[3:9] == ["Running", 1, 0, 0, 10, 3.0] and row[-1] == "s3://b/c"
