"""What ends a segment of an attempt and whether the driver starts another; the resize watch. Pure."""

from __future__ import annotations

import pytest

from sphinxx.jobs.preemption import VOTE_GROW, VOTE_STOP, Preempted, Resized, StopSignal
from sphinxx.jobs.resize import CapacityWatch, workers_that_fit
from sphinxx.jobs.segments import End, Tally, next_segment, segment_end


def test_a_planned_stop_is_an_outcome_and_a_failure_after_a_stop_commit_is_a_preemption() -> None:
    assert segment_end({"step": 60, "loss": 2.0}, failed=False, preempted=False) == End.SUCCEEDED
    assert segment_end(Preempted(7, "SIGTERM").outcome(), failed=False, preempted=False) == End.PREEMPTED
    assert segment_end(Resized(9, "room").outcome(), failed=False, preempted=False) == End.RESIZED
    assert segment_end(None, failed=True, preempted=False) == End.FAILED
    # The preempted pod died before Ray collected its return: the commit says what happened.
    assert segment_end(None, failed=True, preempted=True) == End.PREEMPTED


def test_preemptions_and_failures_have_their_own_bounds_and_resizes_none() -> None:
    tally = Tally()
    for _ in range(2):  # two preemptions with max_failures 1 (and 0): the attempt goes on
        step = next_segment(End.PREEMPTED, tally, max_failures=0, max_preemptions=2)
        assert step.again
        tally = step.tally
    assert tally == Tally(failures=0, preemptions=2, resizes=0)
    third = next_segment(End.PREEMPTED, tally, max_failures=0, max_preemptions=2)
    assert not third.again and "max_preemptions is 2" in third.message
    for _ in range(50):
        tally = next_segment(End.RESIZED, tally, 0, 2).tally
    assert tally.resizes == 50 and tally.failures == 0
    failed = next_segment(End.FAILED, tally, max_failures=1, max_preemptions=2)
    assert failed.again and failed.tally.failures == 1
    assert not next_segment(End.FAILED, failed.tally, max_failures=1, max_preemptions=2).again
    assert not next_segment(End.SUCCEEDED, tally, 0, 0).again


def test_workers_that_fit_count_by_the_scarcest_resource() -> None:
    assert workers_that_fit({"CPU": 7.0, "GPU": 2.0}, {"CPU": 2, "GPU": 1}) == 2
    assert workers_that_fit({"CPU": 7.0}, {"CPU": 2, "GPU": 1}) == 0  # no GPU free
    assert workers_that_fit({"CPU": 3.0, "GPU": 0.0}, {"CPU": 1, "GPU": 0}) == 3  # CPU workers
    assert workers_that_fit({"CPU": 3.0}, {"CPU": 0, "GPU": 0}) == 0  # nothing to count by


def test_the_watch_looks_when_due_and_only_while_the_group_can_grow() -> None:
    now = [0.0]
    free = [{"CPU": 0.0}]
    looks = []

    def probe():
        looks.append(now[0])
        return free[0]

    watch = CapacityWatch(probe, {"CPU": 1}, world_size=1, max_workers=3, every_s=5, clock=lambda: now[0])
    assert not watch.room() and looks == []  # not due yet
    now[0] = 5
    assert not watch.room() and looks == [5]  # due, nothing free
    free[0] = {"CPU": 4.0}
    now[0] = 7
    assert not watch.room() and looks == [5]  # free now, but the next look is at 10
    now[0] = 10
    assert watch.room() and watch.seen == 2  # capped at max_workers - world_size
    full = CapacityWatch(probe, {"CPU": 1}, world_size=3, max_workers=3, every_s=5, clock=lambda: now[0])
    off = CapacityWatch(probe, {"CPU": 1}, world_size=1, max_workers=3, every_s=0, clock=lambda: now[0])
    now[0] = 100
    assert not full.room() and not off.room() and looks == [5, 10]

    def broken():
        raise ConnectionError("GCS busy")

    flaky = CapacityWatch(broken, {"CPU": 1}, world_size=1, max_workers=2, every_s=1, clock=lambda: now[0])
    now[0] = 200
    assert not flaky.room()  # a failed look never stops training


def test_room_counts_once_it_has_lasted_the_settle_window(capsys) -> None:
    now, free = [0.0], [{"CPU": 1.0}]
    watch = CapacityWatch(
        lambda: free[0], {"CPU": 1}, world_size=1, max_workers=2, every_s=5, settle_s=20, clock=lambda: now[0]
    )
    now[0] = 5
    assert not watch.room() and watch.room_since == 5  # first seen: the window starts
    assert "growing once it has lasted 20 s" in capsys.readouterr().out
    now[0] = 20
    assert not watch.room()  # 15 s of room
    free[0] = {"CPU": 0.0}
    now[0] = 25
    assert not watch.room() and watch.room_since is None  # gone: the window starts again
    free[0] = {"CPU": 1.0}
    for t in (30, 35, 40, 45):
        now[0] = t
        assert not watch.room()
    now[0] = 50
    assert watch.room() and watch.seen == 1  # seen at every look from 30 to 50


@pytest.mark.parametrize(
    ("mine", "peers", "expected"),
    [(0.0, 0.0, None), (1.0, 0.0, "resize"), (0.0, VOTE_GROW, "resize"), (1.0, VOTE_STOP, "preempted")],
)
def test_one_vote_carries_stop_requests_and_resizes(mine: float, peers: float, expected: str | None) -> None:
    stop = StopSignal(grace_s=60, exit_fn=lambda code: None)
    agreed = stop.vote(lambda value: max(value, peers), grow=mine > 0)
    assert agreed == expected
    assert (stop.deadline is not None) == (expected == "preempted")  # a peer's stop starts our grace


def test_rank_0_stops_looking_when_a_resize_did_not_grow_the_group(capsys) -> None:
    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.loop import capacity_watch
    from sphinxx.schema.run import ParallelConfig

    par = ParallelConfig(min_workers=1, max_workers=4, gpus_per_worker=0, resize_check_seconds=5)
    free = lambda: {"CPU": 8.0}  # noqa: E731
    assert capacity_watch(par, Worker(rank=0, world_size=2, free_resources=free)).probe is free
    assert capacity_watch(par, Worker(rank=1, world_size=2, free_resources=free)).probe is None
    assert (
        capacity_watch(par, Worker(rank=0, world_size=3, resized_from=2, free_resources=free)).probe is free
    )
    capsys.readouterr()
    assert (
        capacity_watch(par, Worker(rank=0, world_size=2, resized_from=2, free_resources=free)).probe is None
    )
    assert "the resize left 2 worker(s): no more looks for room" in capsys.readouterr().out
