"""RayJob status mapping with KubeRay's real field values (docs/operator.md, "KubeRay status and TrainingRun phases"), and the sweep roll-up."""

from __future__ import annotations

import pytest

from sphinxx.operator import status
from sphinxx.schema.fields import Naming, dump
from sphinxx.sweep.points import admit_sweep as validate_sweep
from sphinxx.sweep.points import points
from tests.schema.corpus import DATA


def _job(deployment: str, job: str = "", **extra) -> dict:
    return {"status": {"jobDeploymentStatus": deployment, "jobStatus": job, **extra}}


@pytest.mark.parametrize(
    ("rayjob", "outcome", "reason"),
    [
        (None, "none", ""),
        ({}, "pending", "New"),
        (_job("Initializing"), "pending", "Initializing"),
        (_job("Waiting"), "pending", "Waiting"),
        (_job("Running", "PENDING"), "running", "Running"),
        (_job("Running", "RUNNING"), "running", "Running"),
        (_job("Complete", "SUCCEEDED"), "succeeded", "Succeeded"),
        (_job("Complete", "STOPPED"), "failed", "JobStopped"),
        (_job("Failed", "FAILED", reason="AppFailed", message="exit 1"), "failed", "AppFailed"),
        (_job("Failed", "", reason="DeadlineExceeded"), "failed", "DeadlineExceeded"),
        (_job("Failed", "", reason="SubmissionFailed"), "failed", "SubmissionFailed"),
        (
            _job("Failed", "", reason="JobStatusCheckTimeoutExceeded"),
            "failed",
            "JobStatusCheckTimeoutExceeded",
        ),
        (
            _job("ValidationFailed", "", reason="ValidationFailed", message="bad spec"),
            "invalid",
            "ValidationFailed",
        ),
        (_job("Suspending"), "suspended", "Suspending"),
        (_job("Suspended"), "suspended", "Suspended"),
        (_job("Retrying"), "retrying", "Retrying"),
    ],
)
def test_rayjob_outcome(rayjob, outcome, reason) -> None:
    view = status.observe_rayjob(rayjob)
    assert (view.outcome, view.reason) == (outcome, reason)
    assert view.terminal == (outcome in ("succeeded", "failed", "invalid"))


def test_rayjob_details_are_mirrored() -> None:
    view = status.observe_rayjob(
        _job(
            "Running",
            "RUNNING",
            rayClusterName="run-a1-abc123-raycluster-x7k2p",
            startTime="2026-01-01T00:00:00Z",
            rayClusterStatus={
                "desiredWorkerReplicas": 4,
                "availableWorkerReplicas": 3,
                "readyWorkerReplicas": 3,
            },
        )
    )
    assert view.cluster == "run-a1-abc123-raycluster-x7k2p" and view.start_time == "2026-01-01T00:00:00Z"
    assert view.workers == {"desired": 4, "available": 3, "ready": 3}


def test_conditions_keep_transition_time_while_unchanged() -> None:
    first = status.run_conditions([], "Running", "Running", "go", 1, "t1")
    second = status.run_conditions(first, "Running", "Running", "go", 2, "t2")
    running = status.condition(second, "Running")
    assert running.status == "True" and running.last_transition_time == "t1"
    assert running.observed_generation == 2
    third = status.run_conditions(second, "Succeeded", "Succeeded", "done", 2, "t3")
    assert status.condition(third, "Running").last_transition_time == "t3"
    assert status.condition(third, "Ready").status == "True"
    assert [c.type for c in third] == sorted(status.RUN_CONDITIONS)


def test_sweep_rollup_counts_rows_and_phase() -> None:
    spec = validate_sweep(
        "s",
        {
            "base": {"preset": "debug", "data": DATA},
            "axes": {"models": ["debug", "tinyllama-1.1b"], "dataFractions": [0.5, 1.0]},
        },
    )
    ordered = points("s", spec.spec)
    children = {
        ordered[0].name: {
            "status": {"phase": "Succeeded", "metrics": {"loss": 2.5}, "lastCheckpoint": {"step": 20}}
        },
        ordered[1].name: {"status": {"phase": "Running"}},
        ordered[2].name: {"status": {"phase": "Failed"}},
    }
    roll = status.rollup(ordered, children, False, [], 1, "t")
    assert roll.counts == {
        "total": 4, "queued": 1, "pending": 0, "running": 1, "resuming": 0, "succeeded": 1, "failed": 1, "suspended": 0,
    }  # fmt: skip
    assert roll.phase == "Running" and roll.progress == "1/4"
    assert dump(roll.points[0], Naming.CAMEL, drop_none=True) == {
        "name": ordered[0].name, "model": "debug", "dataFraction": 0.5, "phase": "Succeeded",
        "attempt": 0, "step": 20, "loss": 2.5,
    }  # fmt: skip
    done = {p.name: {"status": {"phase": "Succeeded", "metrics": {"loss": 1.0}}} for p in ordered}
    assert status.rollup(ordered, done, False, [], 1, "t").phase == "Succeeded"
    done[ordered[3].name] = {"status": {"phase": "Failed"}}
    assert status.rollup(ordered, done, False, [], 1, "t").phase == "Failed"
    assert status.rollup(ordered, done, True, [], 1, "t").phase == "Suspended"


def test_point_rows_are_reparsed_only_when_the_child_changes() -> None:
    raw = {"base": {"preset": "debug", "data": DATA}, "axes": {"models": ["debug"], "dataFractions": [1.0]}}
    (point,) = points("memo", validate_sweep("memo", raw).spec)

    def child(rv: str, phase: str) -> dict:
        return {
            "metadata": {"uid": "u-memo", "resourceVersion": rv},
            "status": {"phase": phase, "attempt": 1},
        }

    first = status.point_row(point, child("5", "Pending"))
    assert status.point_row(point, child("5", "Pending")) is first  # same version: the same row
    moved = status.point_row(point, child("6", "Running"))
    assert moved.phase == "Running" and first.phase == "Pending"
    # Without a uid/version (a child not from the API) the row is computed each time.
    bare = {"status": {"phase": "Failed"}}
    assert status.point_row(point, bare) is not status.point_row(point, bare)
    assert status.point_row(point, bare).phase == "Failed"
