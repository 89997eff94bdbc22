"""Live progress in a TrainingRun's status: the progress record judged, merged with the newest checkpoint."""

from __future__ import annotations

from sphinxx.operator import decide, status
from sphinxx.operator.status import Outcome
from sphinxx.schema.progress import ProgressRecord, Reading
from sphinxx.schema.status import ConditionType, RunPhase, RunProgress, dump_status

from .test_decide import T0, _job, _obs

RUNNING = {"attempt": 1, "phase": "Running"}


def _reading(step: int = 40, **over) -> Reading:
    record = ProgressRecord(**{**dict(run_id="r", attempt=1, step=step, total_steps=100, loss=2.345678,
                                      tokens_per_s=1234.56, mfu=0.312345, seconds_per_step=1.5,
                                      eta_seconds=(100 - step) * 1.5, time=T0 - 5), **over})  # fmt: skip
    return Reading(record, "Reported", f"step {step} reported by attempt 1")


def test_a_usable_record_becomes_the_runs_live_progress_with_a_condition() -> None:
    act = decide.decide_run(_obs(_job("Running", "RUNNING"), RUNNING, progress=_reading()))
    assert dump_status(act.status)["progress"] == {
        "step": 40, "totalSteps": 100, "loss": 2.3457, "tokensPerSecond": 1234.6, "mfu": 0.3123,
        "secondsPerStep": 1.5, "etaSeconds": 90, "eta": "0:01:30", "attempt": 1,
        "updatedAt": "2027-01-15T07:59:55Z",
    }  # fmt: skip
    cond = status.condition(act.status.conditions, ConditionType.PROGRESS_REPORTED)
    assert (cond.status, cond.reason) == ("True", "Reported")


def test_an_unusable_record_keeps_the_figures_drops_the_eta_and_says_why() -> None:
    first = decide.decide_run(_obs(_job("Running", "RUNNING"), RUNNING, progress=_reading()))
    stale = Reading(None, "Stale", "s3://b/r/progress.json was last written at step 40, more than 300s ago")
    act = decide.decide_run(_obs(_job("Running", "RUNNING"), first.status, progress=stale))
    progress = act.status.progress
    assert progress.step == 40 and progress.loss == 2.3457 and progress.eta is None
    cond = status.condition(act.status.conditions, ConditionType.PROGRESS_REPORTED)
    assert (cond.status, cond.reason, cond.message) == ("False", "Stale", stale.message)


def test_a_pass_that_did_not_read_keeps_progress_and_condition_as_they_were() -> None:
    first = decide.decide_run(_obs(_job("Running", "RUNNING"), RUNNING, progress=_reading()))
    again = decide.decide_run(_obs(_job("Running", "RUNNING"), first.status))
    assert dump_status(again.status) == dump_status(first.status)  # nothing changed: nothing to PATCH


def test_a_newer_checkpoint_wins_and_the_eta_follows_it() -> None:
    ckpt = decide.Checkpoint(60, "s3://b/r/checkpoints/step-000000060", {"loss": 2.1})
    act = decide.decide_run(_obs(_job("Running", "RUNNING"), RUNNING, progress=_reading(40), checkpoint=ckpt))
    p = act.status.progress
    assert (p.step, p.loss, p.eta_seconds, p.eta, p.updated_at) == (60, 2.1, 60, "0:01:00", None)
    older = decide.Checkpoint(20, "s3://b/r/checkpoints/step-000000020", {"loss": 3.0})
    act = decide.decide_run(
        _obs(_job("Running", "RUNNING"), RUNNING, progress=_reading(40), checkpoint=older)
    )
    assert (act.status.progress.step, act.status.progress.loss) == (40, 2.3457)


def test_without_any_record_step_and_loss_come_from_the_checkpoint() -> None:
    ckpt = decide.Checkpoint(10, "s3://b/r/checkpoints/step-000000010", {"loss": 2.2})
    act = decide.decide_run(_obs(_job("Complete", "SUCCEEDED"), RUNNING, checkpoint=ckpt))
    assert act.status.phase == RunPhase.SUCCEEDED
    assert dump_status(act.status)["progress"] == {"step": 10, "loss": 2.2}
    assert decide.decide_run(_obs(_job("Running", "RUNNING"), RUNNING)).status.progress is None


def test_the_eta_is_shown_only_while_running() -> None:
    first = decide.decide_run(_obs(_job("Running", "RUNNING"), RUNNING, progress=_reading()))
    assert first.status.progress.eta == "0:01:30"
    done = decide.decide_run(_obs(_job("Complete", "SUCCEEDED"), first.status))
    assert done.status.progress.eta is None and done.status.progress.tokens_per_second == 1234.6
    live = RunProgress(step=5, eta_seconds=10, eta="0:00:10")
    assert decide.live_progress(live, None, None, RunPhase.RESUMING).eta is None


def test_reads_are_due_only_while_running_and_at_most_once_per_interval() -> None:
    due = decide.progress_due
    assert due(Outcome.RUNNING, None, T0, 45, 7.5)
    assert not due(Outcome.RUNNING, T0 - 30, T0, 45, 7.5)
    assert due(Outcome.RUNNING, T0 - 38, T0, 45, 7.5)  # a timer tick a little early still reads
    assert not any(due(o, None, T0, 45, 7.5) for o in Outcome if o != Outcome.RUNNING)


def test_checkpoints_of_a_running_attempt_are_read_when_a_commit_may_exist_or_the_interval_passed() -> None:
    due = decide.checkpoint_due
    # Not running (starting, ended): every pass; running: the first pass of this operator too.
    assert all(due(o, T0 - 1, T0, 60, 7.5, None, 100, 50) for o in Outcome if o != Outcome.RUNNING)
    assert due(Outcome.RUNNING, None, T0, 60, 7.5, None, None, 50)
    # Running, read 15 s ago, the record short of the next boundary (status shows step 100, interval 50).
    assert not due(Outcome.RUNNING, T0 - 15, T0, 60, 7.5, 149, 100, 50)
    assert not due(Outcome.RUNNING, T0 - 15, T0, 60, 7.5, None, 100, 50)  # no record this pass
    assert due(Outcome.RUNNING, T0 - 15, T0, 60, 7.5, 150, 100, 50)  # step 150 may be committed
    assert due(Outcome.RUNNING, T0 - 15, T0, 60, 7.5, 60, None, 50)  # the first commit, at 50
    assert not due(Outcome.RUNNING, T0 - 15, T0, 60, 7.5, 49, None, 50)
    assert due(Outcome.RUNNING, T0 - 53, T0, 60, 7.5, 120, 100, 50)  # the interval (less slack) passed
