"""RayJob status mapping with KubeRay's real field values
(docs/operator.md, "KubeRay status and TrainingRun phases"), and the sweep roll-up."""

from __future__ import annotations

import pytest

from sphinxx.operator import status
from sphinxx.operator.status import JobDeploymentStatus, JobFailedReason, JobStatus, Outcome
from sphinxx.schema.fields import Naming, dump
from sphinxx.schema.status import ConditionType, RunPhase, SweepPhase
from sphinxx.sweep.points import admit_sweep as validate_sweep
from sphinxx.sweep.points import points
from tests.e2e import kuberay_standin
from tests.schema.corpus import DATA


def _job(deployment: str, job: str = "", **extra) -> dict:
    return {"status": {"jobDeploymentStatus": deployment, "jobStatus": job, **extra}}


# KubeRay's values, read in ray-project/kuberay `ray-operator/apis/ray/v1/rayjob_types.go` (v1.7, commit
# feeaf72): the JobStatus constants and IsJobTerminal (lines 17-43), the JobDeploymentStatus constants
# and IsJobDeploymentTerminal (lines 48-65), the JobFailedReason constants (lines 70-78).
KUBERAY_JOB_STATUS = {  # value -> IsJobTerminal
    "": False,
    "PENDING": False,
    "RUNNING": False,
    "STOPPED": True,
    "SUCCEEDED": True,
    "FAILED": True,
}
KUBERAY_DEPLOYMENT_STATUS = {  # value -> IsJobDeploymentTerminal
    "": False,
    "Initializing": False,
    "Running": False,
    "Complete": True,
    "Failed": True,
    "ValidationFailed": False,
    "Suspending": False,
    "Suspended": False,
    "Retrying": False,
    "Waiting": False,
}
KUBERAY_FAILED_REASONS = (
    "SubmissionFailed",
    "DeadlineExceeded",
    "PreRunningDeadlineExceeded",
    "AppFailed",
    "JobDeploymentStatusTransitionGracePeriodExceeded",
    "JobStatusCheckTimeoutExceeded",
    "ValidationFailed",
)


def test_job_status_is_kuberays() -> None:
    assert {s.value: s.is_terminal for s in JobStatus} == KUBERAY_JOB_STATUS


def test_job_deployment_status_is_kuberays() -> None:
    assert {s.value: s.is_terminal for s in JobDeploymentStatus} == KUBERAY_DEPLOYMENT_STATUS
    assert {s.value for s in JobDeploymentStatus if s.is_suspended} == {"Suspending", "Suspended"}
    assert all(JobDeploymentStatus.parse(value) == value for value in KUBERAY_DEPLOYMENT_STATUS)
    assert JobDeploymentStatus.parse("Scheduling") is None  # not KubeRay v1.7's: unknown


def test_job_failed_reason_is_kuberays() -> None:
    assert tuple(r.value for r in JobFailedReason) == KUBERAY_FAILED_REASONS


def test_the_kuberay_standin_ends_jobs_where_kuberay_does() -> None:
    """The stand-in writes KubeRay's strings on its own; its terminal sets agree with the enums'."""
    assert set(kuberay_standin.TERMINAL_JOB) == {s for s in JobStatus if s.is_terminal}
    assert set(kuberay_standin.TERMINAL_DEPLOYMENT) == {s for s in JobDeploymentStatus if s.is_terminal}


OUTCOME_PREDICATES = {  # outcome: (is_terminal, is_starting, is_live, is_unfinished)
    Outcome.NONE: (False, False, False, False),
    Outcome.PENDING: (False, True, True, True),
    Outcome.RUNNING: (False, False, True, True),
    Outcome.SUCCEEDED: (True, False, False, False),
    Outcome.FAILED: (True, False, False, False),
    Outcome.INVALID: (True, False, False, False),
    Outcome.SUSPENDED: (False, False, False, True),
    Outcome.RETRYING: (False, True, True, True),
}


@pytest.mark.parametrize(("outcome", "expected"), OUTCOME_PREDICATES.items())
def test_outcome_predicates(outcome: Outcome, expected: tuple[bool, bool, bool, bool]) -> None:
    assert (outcome.is_terminal, outcome.is_starting, outcome.is_live, outcome.is_unfinished) == expected
    assert f"{outcome}" == outcome.value  # messages name it: "the attempt is running"


def test_every_outcome_has_predicates() -> None:
    assert set(OUTCOME_PREDICATES) == set(Outcome)


DEPLOYMENT_OUTCOMES = {  # jobDeploymentStatus (jobStatus "", no reason) -> our outcome
    "": Outcome.PENDING,
    "Initializing": Outcome.PENDING,
    "Running": Outcome.RUNNING,
    "Complete": Outcome.FAILED,  # without SUCCEEDED
    "Failed": Outcome.FAILED,
    "ValidationFailed": Outcome.INVALID,
    "Suspending": Outcome.SUSPENDED,
    "Suspended": Outcome.SUSPENDED,
    "Retrying": Outcome.RETRYING,
    "Waiting": Outcome.PENDING,
}


def test_every_deployment_status_has_an_outcome() -> None:
    assert set(DEPLOYMENT_OUTCOMES) == set(KUBERAY_DEPLOYMENT_STATUS)
    for deployment, outcome in DEPLOYMENT_OUTCOMES.items():
        assert status.observe_rayjob(_job(deployment)).outcome == outcome, deployment


def test_a_deployment_status_newer_than_this_operator_reads_as_pending_under_its_name() -> None:
    view = status.observe_rayjob(_job("Scheduling"))
    assert (view.outcome, view.reason) == (Outcome.PENDING, "Scheduling")


@pytest.mark.parametrize(
    ("rayjob", "outcome", "reason"),
    [
        (None, Outcome.NONE, ""),
        ({}, Outcome.PENDING, "New"),
        (_job("Initializing"), Outcome.PENDING, "Initializing"),
        (_job("Waiting"), Outcome.PENDING, "Waiting"),
        (_job("Running", "PENDING"), Outcome.RUNNING, "Running"),
        (_job("Running", "RUNNING"), Outcome.RUNNING, "Running"),
        (_job("Complete", "SUCCEEDED"), Outcome.SUCCEEDED, "Succeeded"),
        (_job("Complete", "STOPPED"), Outcome.FAILED, "JobStopped"),
        (_job("Failed", "FAILED", reason="AppFailed", message="exit 1"), Outcome.FAILED, "AppFailed"),
        (_job("Failed", "", reason="DeadlineExceeded"), Outcome.FAILED, "DeadlineExceeded"),
        (_job("Failed", "", reason="SubmissionFailed"), Outcome.FAILED, "SubmissionFailed"),
        (
            _job("Failed", "", reason="JobStatusCheckTimeoutExceeded"),
            Outcome.FAILED,
            "JobStatusCheckTimeoutExceeded",
        ),
        (
            _job("ValidationFailed", "", reason="ValidationFailed", message="bad spec"),
            Outcome.INVALID,
            "ValidationFailed",
        ),
        (_job("Failed", "", reason="ValidationFailed"), Outcome.INVALID, "ValidationFailed"),
        (_job("Suspending"), Outcome.SUSPENDED, "Suspending"),
        (_job("Suspended"), Outcome.SUSPENDED, "Suspended"),
        (_job("Retrying"), Outcome.RETRYING, "Retrying"),
    ],
)
def test_rayjob_outcome(rayjob, outcome, reason) -> None:
    view = status.observe_rayjob(rayjob)
    assert (view.outcome, view.reason) == (outcome, reason)
    assert type(view.reason) is str  # KubeRay's string or ours, never a member: it is written to status


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
    first = status.run_conditions([], RunPhase.RUNNING, "Running", "go", 1, "t1")
    second = status.run_conditions(first, RunPhase.RUNNING, "Running", "go", 2, "t2")
    running = status.condition(second, ConditionType.RUNNING)
    assert running.status == "True" and running.last_transition_time == "t1"
    assert running.observed_generation == 2
    third = status.run_conditions(second, RunPhase.SUCCEEDED, "Succeeded", "done", 2, "t3")
    assert status.condition(third, ConditionType.RUNNING).last_transition_time == "t3"
    assert status.condition(third, ConditionType.READY).status == "True"
    assert [c.type for c in third] == sorted(status.RUN_CONDITIONS)


RUN_CONDITION_TRUTH = {  # phase -> the conditions that are True
    RunPhase.QUEUED: set(),
    RunPhase.PENDING: set(),
    RunPhase.RUNNING: {"Ready", "Running"},
    RunPhase.RESUMING: {"Resuming"},
    RunPhase.SUCCEEDED: {"Ready", "Succeeded"},
    RunPhase.FAILED: {"Failed"},
    RunPhase.SUSPENDED: {"Suspended"},
}


@pytest.mark.parametrize(("phase", "true"), RUN_CONDITION_TRUTH.items())
def test_a_true_run_condition_carries_the_reason_a_false_one_the_phase(
    phase: RunPhase, true: set[str]
) -> None:
    conditions = status.run_conditions([], phase, "Why", "what", 3, "t")
    assert {c.type: c.status for c in conditions} == {
        t: "True" if t in true else "False" for t in status.RUN_CONDITIONS
    }
    for c in conditions:
        assert (c.reason, c.message) == (("Why", "what") if c.type in true else (phase, ""))


def test_sweep_conditions_follow_the_rollup() -> None:
    roll = status.rollup([], {}, True, [], 1, "t")
    assert roll.phase == SweepPhase.SUSPENDED
    assert [c.type for c in roll.conditions] == sorted(status.SWEEP_CONDITIONS)
    assert {c.type: c.status for c in roll.conditions} == {
        "Complete": "False", "Failed": "False", "Progressing": "False", "Ready": "True",
    }  # fmt: skip


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
        "total": 4, "queued": 1, "pending": 0, "running": 1, "resuming": 0, "succeeded": 1, "failed": 1,
        "suspended": 0,
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
