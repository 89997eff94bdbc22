"""The sweep's ETA roll-up (operator/eta.py): pure, checked against schedules worked out by hand."""

from __future__ import annotations

from sphinxx.operator.eta import PointEta, point_eta, rounded, sweep_eta
from sphinxx.schema.status import RunPhase

R, Q, S, F = RunPhase.RUNNING, RunPhase.QUEUED, RunPhase.SUCCEEDED, RunPhase.FAILED


def running(model: str, fraction: float, eta: float, step: int = 10, total: int = 100, sps: float = 6.0):
    return PointEta(model, fraction, R, eta, step, total, sps)


def test_rounding_keeps_a_counting_down_eta_from_rewriting_status_every_pass() -> None:
    assert [rounded(s) for s in (1, 59, 60, 61, 7199)] == [60, 60, 60, 120, 7200]
    assert rounded(7201) == 7500 and rounded(86_401) == 90_000


def test_running_points_on_enough_slots_end_with_the_slowest() -> None:
    points = [running("a", 0.5, 300), running("a", 1.0, 1000), PointEta("a", 0.25, S)]
    eta = sweep_eta(points, slots=0)
    assert (eta.seconds, eta.text) == (1020, "0:17:00")  # 1000 s, rounded up to the minute
    assert "2 point(s) to go on 2 slot(s)" in eta.note


def test_waiting_points_take_the_first_free_slot_with_their_model_length_scaled_by_data() -> None:
    # One slot. The running point (model a, fraction 0.5) has 100 steps at 6 s: 600 s long, 300 s left.
    # The queued a@1.0 is estimated at 600 * 1.0 / 0.5 = 1200 s; it starts when the slot frees.
    points = [running("a", 0.5, 300, step=50, total=100, sps=6.0), PointEta("a", 1.0, Q)]
    assert sweep_eta(points, slots=1).seconds == rounded(300 + 1200)
    # Two slots: it starts now.
    assert sweep_eta(points, slots=2).seconds == rounded(1200)
    # No limit (maxParallelRuns 0): every point starts now.
    assert sweep_eta(points, slots=0).seconds == rounded(1200)


def test_slots_are_filled_in_the_sweeps_order() -> None:
    # Two slots, both busy (100 s and 500 s left); three queued points of 600 s, 60 s and 60 s (a@1.0 is
    # 600 s long). By hand: q1 takes the 100 s slot (ends 700), q2 the 500 s slot (ends 560), q3 the 560 one.
    a = running("a", 1.0, 100, step=90, total=100, sps=6.0)
    b = PointEta("b", 1.0, R, 500, 50, 100, 10.0)
    queued = [PointEta("a", 1.0, Q), PointEta("a", 0.1, Q), PointEta("a", 0.1, Q)]
    assert sweep_eta([a, b, *queued], slots=2).seconds == rounded(max(700, 560 + 60))


def test_a_point_whose_model_has_not_reported_makes_the_eta_a_lower_bound() -> None:
    points = [running("a", 1.0, 100), PointEta("b", 1.0, Q)]
    eta = sweep_eta(points, slots=1)
    assert eta.text == "0:02:00+" and eta.seconds == 120
    assert "1 without an estimate" in eta.note and "lower bound" in eta.note


def test_a_point_that_reported_but_is_not_running_needs_its_remaining_steps() -> None:
    resuming = PointEta(
        "a", 1.0, RunPhase.RESUMING, eta_seconds=None, step=80, total_steps=100, seconds_per_step=3.0
    )
    assert sweep_eta([resuming], slots=1).seconds == rounded(60)


def test_no_estimate_when_nothing_reported_finished_or_suspended() -> None:
    assert sweep_eta([PointEta("a", 1.0, Q), PointEta("a", 1.0, RunPhase.PENDING)], 2).seconds is None
    assert "no point has reported" in sweep_eta([PointEta("a", 1.0, Q)], 2).note
    done = sweep_eta([PointEta("a", 1.0, S), PointEta("a", 0.5, F)], 2)
    assert (done.seconds, done.text, done.note) == (None, None, "every point has finished")
    assert sweep_eta([running("a", 1.0, 100)], 1, suspended=True).note == "the sweep is suspended"


def test_a_point_reads_its_trainingruns_progress_as_the_api_server_holds_it() -> None:
    p = point_eta("a", 0.5, R, {"step": 12, "totalSteps": 40, "secondsPerStep": 2.5, "etaSeconds": 70})
    assert p == PointEta("a", 0.5, R, 70.0, 12, 40, 2.5)
    assert p.length == 100.0 and p.left == 70.0
    assert point_eta("a", 0.5, Q, None) == PointEta("a", 0.5, Q)
    assert point_eta("a", 0.5, R, {"step": "x", "etaSeconds": True}).eta_seconds is None  # junk is unknown
