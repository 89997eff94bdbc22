"""The TrainingRun state machine: one observation in, one action out."""

from __future__ import annotations

from dataclasses import replace

from sphinxx.operator import decide, status
from sphinxx.schema.resources import FailurePolicy
from sphinxx.schema.status import ConditionType, RunStatus, dump_status, parse_status

T0 = 1_800_000_000.0


def _obs(job: dict | None = None, st: dict | RunStatus | None = None, **changes) -> decide.RunObserved:
    fields = dict(
        generation=1,
        policy=FailurePolicy(max_retries=2, backoff_seconds=10, max_backoff_seconds=15),
        suspend=False,
        queued=False,
        bounds=(1, 2),
        status=st if isinstance(st, RunStatus) else parse_status(RunStatus, st or {}),
        job=status.observe_rayjob(job),
        job_suspended=bool(((job or {}).get("spec") or {}).get("suspend")),
        admitted=True,
        resume_token=None,
        checkpoint=None,
        cluster_bounds=None,
        now=T0,
        now_iso="2027-01-15T08:00:00Z",
    )
    fields.update(changes)
    return decide.RunObserved(**fields)


def wire(act) -> dict:
    """The action's status as the API server stores it (camelCase JSON)."""
    return dump_status(act.status)


def _job(deployment: str, job: str = "", reason: str = "", **spec) -> dict:
    return {"spec": spec, "status": {"jobDeploymentStatus": deployment, "jobStatus": job, "reason": reason}}


def test_new_run_creates_attempt_one() -> None:
    act = decide.decide_run(_obs())
    assert act.create_attempt == 1 and wire(act)["attempt"] == 1 and wire(act)["phase"] == "Pending"
    assert [e[1] for e in act.events] == ["AttemptCreated"]


def test_unreadable_inputs_block_the_first_attempt_until_they_are_readable() -> None:
    problem = "model.llm_weights: s3://w/tiny does not exist (no object, and no files under it)"
    act = decide.decide_run(_obs(inputs=(problem,)))
    assert act.create_attempt is None and wire(act)["phase"] == "Pending" and wire(act)["attempt"] == 0
    blocked = status.condition(act.status.conditions, ConditionType.BLOCKED)
    assert blocked.status == "True" and blocked.reason == "InputsUnreadable" and problem in blocked.message
    assert ("Warning", "InputsUnreadable", f"pre-flight check failed: {problem}") in act.events
    again = decide.decide_run(_obs(st=act.status, inputs=(problem,)))
    assert again.events == [] and again.create_attempt is None  # the same problem: no new event
    fixed = decide.decide_run(_obs(st=again.status, inputs=()))
    assert fixed.create_attempt == 1
    assert status.condition(fixed.status.conditions, ConditionType.BLOCKED).status == "False"
    # Not checked (a retry, or the check turned off): no Blocked condition is touched.
    assert status.condition(decide.decide_run(_obs()).status.conditions, ConditionType.BLOCKED) is None


def test_unadmitted_point_waits() -> None:
    act = decide.decide_run(_obs(admitted=False))
    assert act.create_attempt is None and wire(act)["phase"] == "Queued"  # not Pending: nothing exists yet
    assert status.condition(act.status.conditions, ConditionType.READY).reason == "Queued"
    assert wire(act)["message"].startswith("waiting for a slot")


def test_running_mirrors_and_patches_elastic_bounds() -> None:
    act = decide.decide_run(
        _obs(_job("Running", "RUNNING"), {"attempt": 1, "phase": "Pending"}, cluster_bounds=(1, 1))
    )
    assert wire(act)["phase"] == "Running" and act.patch_cluster == (1, 2)
    same = decide.decide_run(_obs(_job("Running", "RUNNING"), act.status, cluster_bounds=(1, 2)))
    assert same.patch_cluster is None and same.events == []


def test_success_finishes_tracking_once() -> None:
    act = decide.decide_run(_obs(_job("Complete", "SUCCEEDED"), {"attempt": 1, "phase": "Running"}))
    assert wire(act)["phase"] == "Succeeded" and act.finish_tracking == "FINISHED"
    again = decide.decide_run(_obs(_job("Complete", "SUCCEEDED"), act.status))
    assert again.finish_tracking is None and again.events == [] and again.create_attempt is None


def test_failure_backs_off_then_retries_then_gives_up() -> None:
    failed = _job("Failed", "FAILED", "AppFailed")
    first = decide.decide_run(_obs(failed, {"attempt": 1, "phase": "Running"}))
    assert wire(first)["phase"] == "Resuming" and first.create_attempt is None
    assert first.requeue_after == 10 and wire(first)["lastFailureTime"] == "2027-01-15T08:00:00Z"
    early = decide.decide_run(_obs(failed, first.status, now=T0 + 5))
    assert early.create_attempt is None and early.requeue_after == 5
    retry = decide.decide_run(_obs(failed, first.status, now=T0 + 10))
    assert retry.create_attempt == 2 and wire(retry)["retries"] == 1 and "lastFailureTime" not in wire(retry)
    # Attempt 2 fails too; the second retry waits 2 x 10 s capped at 15 s.
    second = decide.decide_run(_obs(failed, retry.status, now=T0 + 20))
    assert second.requeue_after == 15
    third = decide.decide_run(_obs(failed, second.status, now=T0 + 35))
    assert third.create_attempt == 3 and wire(third)["retries"] == 2
    exhausted = decide.decide_run(_obs(failed, third.status, now=T0 + 100))
    assert wire(exhausted)["phase"] == "Failed" and exhausted.finish_tracking == "FAILED"
    assert exhausted.create_attempt is None and exhausted.events[-1][0] == "Warning"


def test_manual_resume_restarts_a_failed_run_once() -> None:
    failed = _job("Failed", "FAILED", "AppFailed")
    st = {"attempt": 3, "phase": "Failed", "retries": 2}
    act = decide.decide_run(_obs(failed, st, resume_token="now"))
    assert act.create_attempt == 4 and wire(act)["retries"] == 0 and wire(act)["resumeToken"] == "now"
    assert wire(act)["phase"] == "Resuming"
    # The same token again (a later reconcile) does nothing new.
    again = decide.decide_run(_obs(_job("Initializing"), act.status, resume_token="now"))
    assert again.create_attempt is None and wire(again)["phase"] == "Resuming"


def test_resume_of_a_running_run_is_ignored() -> None:
    act = decide.decide_run(
        _obs(_job("Running", "RUNNING"), {"attempt": 1, "phase": "Running"}, resume_token="x")
    )
    assert act.create_attempt is None and act.events[0][1] == "ResumeIgnored"


def test_suspend_and_unsuspend() -> None:
    running = _job("Running", "RUNNING")
    act = decide.decide_run(_obs(running, {"attempt": 1, "phase": "Running"}, suspend=True))
    assert act.suspend_job is True and wire(act)["phase"] == "Suspended"
    queued = decide.decide_run(_obs(running, {"attempt": 1, "phase": "Running"}, suspend=True, queued=True))
    assert queued.delete_job and queued.suspend_job is None
    suspended = _job("Suspended", suspend=True)
    resumed = decide.decide_run(_obs(suspended, act.status))
    assert resumed.suspend_job is False and wire(resumed)["phase"] == "Resuming"
    # With the RayJob deleted (queued case), unsuspending starts the next attempt.
    fresh = decide.decide_run(_obs(None, wire(queued)))
    assert fresh.create_attempt == 2


def test_validation_failure_is_not_retried() -> None:
    act = decide.decide_run(
        _obs(_job("ValidationFailed", reason="ValidationFailed"), {"attempt": 1, "phase": "Pending"})
    )
    assert wire(act)["phase"] == "Failed" and act.create_attempt is None


def test_checkpoint_and_metrics_land_in_status() -> None:
    ckpt = decide.Checkpoint(step=40, uri="s3://b/r/checkpoints/step-000000040", metrics={"loss": 2.1})
    act = decide.decide_run(
        _obs(_job("Running", "RUNNING"), {"attempt": 1, "phase": "Running"}, checkpoint=ckpt)
    )
    assert wire(act)["lastCheckpoint"] == {"step": 40, "uri": ckpt.uri} and wire(act)["metrics"] == {
        "loss": 2.1
    }
    pending = decide.decide_run(
        _obs(_job("Initializing"), {"attempt": 1, "phase": "Pending"}, checkpoint=ckpt)
    )
    assert wire(pending)["phase"] == "Resuming"  # a checkpoint exists: the attempt resumes from it


def test_backoff_doubles_and_caps() -> None:
    policy = FailurePolicy(backoff_seconds=30, max_backoff_seconds=100)
    assert [decide.backoff(policy, n) for n in range(4)] == [30, 60, 100, 100]
    assert decide.backoff(replace(policy, backoff_seconds=0), 3) == 0


def test_queued_rayjob_suspend_is_left_to_kueue() -> None:
    """Kueue suspends a queued RayJob until admission (and on preemption): we must not unsuspend it."""
    held = _job("Suspended", suspend=True)
    act = decide.decide_run(_obs(held, {"attempt": 1, "phase": "Pending"}, queued=True))
    assert act.suspend_job is None and not act.delete_job and act.create_attempt is None
    assert wire(act)["phase"] == "Pending"
    assert wire(act)["message"] == "attempt 1 waits for Kueue admission"
    # Not yet seen by KubeRay ("" status) but already suspended by Kueue's webhook: the same.
    fresh = decide.decide_run(_obs(_job("", suspend=True), {"attempt": 1, "phase": "Pending"}, queued=True))
    assert fresh.suspend_job is None and wire(fresh)["phase"] == "Pending"
    # Preempted after a checkpoint: the attempt waits to be re-admitted and then resumes.
    ckpt = decide.Checkpoint(step=40, uri="s3://b/r/checkpoints/step-000000040")
    preempted = decide.decide_run(
        _obs(held, {"attempt": 1, "phase": "Running"}, queued=True, checkpoint=ckpt)
    )
    assert preempted.suspend_job is None and wire(preempted)["phase"] == "Resuming"
    resuming = status.condition(preempted.status.conditions, ConditionType.RESUMING)
    assert resuming.reason == "WaitingForAdmission"
    # Without a queue the same RayJob is ours to unsuspend.
    assert decide.decide_run(_obs(held, {"attempt": 1, "phase": "Suspended"})).suspend_job is False


def test_suspending_a_queued_run_deletes_the_attempt_kueue_holds() -> None:
    held = _job("Suspended", suspend=True)
    act = decide.decide_run(_obs(held, {"attempt": 1, "phase": "Pending"}, queued=True, suspend=True))
    assert act.delete_job and act.suspend_job is None and wire(act)["phase"] == "Suspended"
    # Unsuspended later: a new attempt goes through the queue again.
    again = decide.decide_run(_obs(None, act.status, queued=True))
    assert again.create_attempt == 2


def _sweep_pass(phases: list[str], st: dict | None = None) -> decide.SweepAction:
    """One decide_sweep pass over a 1 x 2 sweep whose points are in `phases`."""
    from sphinxx.operator import expand
    from sphinxx.sweep.points import admit_sweep as validate_sweep
    from sphinxx.sweep.points import points
    from tests.schema.corpus import DATA

    raw = {
        "base": {"preset": "debug", "data": DATA},
        "axes": {"models": ["debug"], "dataFractions": [0.5, 1.0]},
    }
    sweep = {
        "metadata": {"name": "s", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": raw,
        "status": st or {},
    }
    spec = validate_sweep("s", raw).spec
    children = [
        {**expand.child_manifest(sweep, raw, point), "status": {"phase": phase, "metrics": {"loss": 2.0}}}
        for point, phase in zip(points("s", spec), phases, strict=True)
    ]
    return decide.decide_sweep(sweep, spec, children, None, "t")


def test_parent_run_ends_with_the_sweep_and_reopens_on_resume() -> None:
    assert _sweep_pass(["Running", "Pending"]).tracking_status is None  # open, as created
    done = _sweep_pass(["Succeeded", "Succeeded"], {"phase": "Running"})
    assert wire(done)["phase"] == "Succeeded" and done.tracking_status == "FINISHED"
    # until MLflow took it (the reconciler records it), every pass asks again: an outage loses nothing
    assert _sweep_pass(["Succeeded", "Succeeded"], {"phase": "Succeeded"}).tracking_status == "FINISHED"
    settled = {"phase": "Succeeded", "mlflowRunStatus": "FINISHED"}
    assert _sweep_pass(["Succeeded", "Succeeded"], settled).tracking_status is None
    assert _sweep_pass(["Succeeded", "Failed"], {"phase": "Running"}).tracking_status == "FAILED"
    resumed = _sweep_pass(["Succeeded", "Resuming"], {"phase": "Failed", "mlflowRunStatus": "FAILED"})
    assert wire(resumed)["phase"] == "Running" and resumed.tracking_status == "RUNNING"


def test_rollback_requests_parse_once_and_refuse_while_an_attempt_can_write() -> None:
    assert decide.rollback_request(None, None) is None
    assert decide.rollback_request("40@t1", "40@t1") is None  # acted on already
    assert decide.rollback_request("40@t2", "40@t1") == decide.RollbackRequest("40@t2", 40)
    bad = decide.rollback_request("forty", None)
    assert bad is not None and bad.step is None and "is not '<step>@<time>'" in bad.error
    running = status.observe_rayjob(_job("Running", "RUNNING"))
    assert "suspend the run" in (decide.rollback_refusal("Running", running) or "")
    assert "still suspending" in (
        decide.rollback_refusal("Suspended", status.observe_rayjob(_job("Suspending"))) or ""
    )
    assert decide.rollback_refusal("Suspended", status.observe_rayjob(_job("Suspended"))) is None
    assert (
        decide.rollback_refusal("Failed", status.observe_rayjob(_job("Failed", "FAILED", "AppFailed")))
        is None
    )
    assert decide.rollback_refusal("Failed", status.observe_rayjob(None)) is None
    assert "succeeded" in (decide.rollback_refusal("Succeeded", status.observe_rayjob(None)) or "")


def test_a_rollback_of_a_failed_run_starts_the_next_attempt_from_the_chosen_step() -> None:
    failed = {"attempt": 2, "phase": "Failed", "retries": 2, "rayJobName": "r-a2"}
    done = decide.RollbackOutcome("20@t", 20, "s3://b/r/checkpoints/step-000000020", (30, 40))
    act = decide.decide_run(_obs(_job("Failed", "FAILED", "AppFailed"), failed, rollback=done))
    st = wire(act)
    assert act.create_attempt == 3 and st["retries"] == 0 and st["phase"] == "Resuming"
    assert st["rollbackToken"] == "20@t" and st["lastCheckpoint"]["step"] == 20
    assert st["lastRollback"] == {
        "request": "20@t", "toStep": 20, "rolledBackSteps": [30, 40], "afterAttempt": 2,
        "time": "2027-01-15T08:00:00Z",
    }  # fmt: skip
    assert ("Normal", "RolledBack") in {(t, r) for t, r, _ in act.events}
    assert "resumes from step 20" in st["message"]


def test_a_refused_rollback_changes_nothing_but_the_token() -> None:
    running = {"attempt": 1, "phase": "Running", "rayJobName": "r-a1"}
    refused = decide.RollbackOutcome("20@t", error="the attempt is running: suspend the run")
    act = decide.decide_run(_obs(_job("Running", "RUNNING"), running, rollback=refused))
    st = wire(act)
    assert act.create_attempt is None and st["phase"] == "Running" and "lastRollback" not in st
    assert st["rollbackToken"] == "20@t"
    assert [(t, r) for t, r, _ in act.events] == [("Warning", "RollbackRefused")]
    # A suspended run rolls back and stays suspended: unsuspending resumes from the step.
    suspended = {"attempt": 1, "phase": "Suspended", "rayJobName": "r-a1"}
    done = decide.RollbackOutcome("20@u", 20, "u", (30,))
    act = decide.decide_run(_obs(_job("Suspended", suspend=True), suspended, suspend=True, rollback=done))
    assert (
        act.create_attempt is None
        and wire(act)["phase"] == "Suspended"
        and wire(act)["lastRollback"]["toStep"] == 20
    )


def test_a_pass_posts_one_event_for_all_the_points_it_creates() -> None:
    from sphinxx.sweep.points import admit_sweep as validate_sweep
    from tests.schema.corpus import DATA

    fractions = [round((i + 1) / 12, 6) for i in range(12)]
    raw = {
        "base": {"preset": "debug", "data": DATA},
        "axes": {"models": ["debug"], "dataFractions": fractions},
    }
    sweep = {"metadata": {"name": "s", "namespace": "ns", "uid": "u", "generation": 1}, "spec": raw}
    act = decide.decide_sweep(sweep, validate_sweep("s", raw).spec, [], None, "t")
    created = [e for e in act.events if e[1] == "PointsCreated"]
    assert len(act.plan.create) == 12 and len(created) == 1
    message = created[0][2]
    assert message.startswith("12 TrainingRun(s) created: s-debug-d") and message.endswith("(+7 more)")
    assert decide.name_list(["a", "b"]) == "a, b"


def _stop_commit(step: int, preemptions: int, attempt: int | None) -> decide.Checkpoint:
    """A checkpoint as the job commits it: its planned stops, and the attempt a preemption stopped."""
    metrics = {"loss": 2.0, "preemptions": float(preemptions), "resizes": 1.0}
    if attempt is not None:
        metrics["preempted_in_attempt"] = float(attempt)
    return decide.Checkpoint(step, f"s3://b/r/checkpoints/step-{step:09d}", metrics)


def test_preempted_attempts_resume_without_a_retry_until_their_own_bound() -> None:
    failed = _job("Failed", "FAILED", "AppFailed")
    # Attempt 1's workers committed step 12 when asked to stop, then the attempt died (head lost).
    first = decide.decide_run(
        _obs(failed, {"attempt": 1, "phase": "Running"}, checkpoint=_stop_commit(12, 1, 1), max_preemptions=2)
    )
    assert first.create_attempt == 2 and first.requeue_after is None  # no backoff
    assert wire(first)["retries"] == 0 and wire(first)["preemptions"] == 1 and wire(first)["resizes"] == 1
    assert wire(first)["phase"] == "Resuming" and first.events[-1][1] == "Preempted"
    cond = status.condition(first.status.conditions, ConditionType.PREEMPTED)
    assert cond.status == "True" and cond.reason == "Preempted" and "max_preemptions is 2" in cond.message
    # Attempt 2 is preempted too: the second preemption still uses no retry (retries: 0 of 2 left).
    second = decide.decide_run(
        _obs(failed, first.status, checkpoint=_stop_commit(20, 2, 2), max_preemptions=2)
    )
    assert second.create_attempt == 3 and wire(second)["retries"] == 0 and wire(second)["preemptions"] == 2
    # Attempt 3 fails without a new preemption commit (its newest commit is attempt 2's): a real failure.
    third = decide.decide_run(
        _obs(failed, second.status, checkpoint=_stop_commit(20, 2, 2), max_preemptions=2)
    )
    assert third.create_attempt is None and third.requeue_after == 10  # the retry path, with backoff
    # Over the bound: a preemption is a failure again (retries, then Failed).
    over = decide.decide_run(
        _obs(failed, {"attempt": 5, "phase": "Running"}, checkpoint=_stop_commit(30, 3, 5), max_preemptions=2)
    )
    assert over.create_attempt is None and over.requeue_after == 10
    assert status.condition(over.status.conditions, ConditionType.PREEMPTED).reason == "PreemptionsExhausted"


def test_preemption_pure_decision() -> None:
    assert decide.preempted_attempt(_stop_commit(5, 1, 3), 3, 1)
    assert not decide.preempted_attempt(_stop_commit(5, 1, 2), 3, 1)  # an earlier attempt's stop
    assert not decide.preempted_attempt(_stop_commit(5, 2, 3), 3, 1)  # over the bound
    assert not decide.preempted_attempt(_stop_commit(5, 0, None), 3, 1)  # a periodic commit
    assert not decide.preempted_attempt(None, 3, 1)
    # A run never preempted has no Preempted condition at all.
    act = decide.decide_run(
        _obs(_job("Running", "RUNNING"), {"attempt": 1}, checkpoint=_stop_commit(4, 0, None))
    )
    assert status.condition(act.status.conditions, ConditionType.PREEMPTED) is None
    assert wire(act).get("preemptions", 0) == 0
