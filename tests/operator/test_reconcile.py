"""The act layer's pure helpers: which objects a pass may skip, and the config an attempt reads."""

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest

from sphinxx.operator import names, reconcile
from sphinxx.operator.settings import Settings
from sphinxx.schema.admission import admit_run
from sphinxx.schema.status import RunStatus, SweepStatus, parse_status
from tests.schema.corpus import RUN_BASE


def _obj(status: dict[str, Any], generation: int = 2, **annotations: str) -> dict[str, Any]:
    return {"metadata": {"generation": generation, "annotations": annotations}, "status": status}


INVALID = [{"type": "Invalid", "status": "True", "reason": "InvalidSpec"}]


@pytest.mark.parametrize(
    ("obj", "settled"),
    [
        (_obj({"observedGeneration": 2, "phase": "Succeeded"}), True),
        (_obj({"observedGeneration": 1, "phase": "Succeeded"}), False),  # edited since
        (_obj({"observedGeneration": 2, "phase": "Running"}), False),
        (_obj({"observedGeneration": 2, "phase": "Failed"}), True),
        (_obj({"observedGeneration": 2, "phase": "Failed", "resumeToken": "a"},
              **{names.ANNOTATION_RESUME: "a"}), True),
        (_obj({"observedGeneration": 2, "phase": "Failed", "resumeToken": "a"},
              **{names.ANNOTATION_RESUME: "b"}), False),
        (_obj({"observedGeneration": 2, "phase": "Succeeded"}, **{names.ANNOTATION_ROLLBACK: "4@t"}), False),
        (_obj({"observedGeneration": 2, "phase": "Succeeded", "rollbackToken": "4@t"},
              **{names.ANNOTATION_ROLLBACK: "4@t"}), True),
        (_obj({"observedGeneration": 2, "phase": "Failed", "conditions": INVALID}), True),
        (_obj({}), False),
    ],
)  # fmt: skip
def test_a_run_is_settled_once_it_ended_at_its_generation(obj: dict[str, Any], settled: bool) -> None:
    assert reconcile._settled(obj, parse_status(RunStatus, obj["status"])) is settled


def test_a_sweep_is_settled_only_when_invalid() -> None:
    done = _obj({"observedGeneration": 2, "phase": "Succeeded"})
    assert not reconcile._settled(done, parse_status(SweepStatus, done["status"]))
    invalid = _obj({"observedGeneration": 2, "phase": "Failed", "conditions": INVALID})
    assert reconcile._settled(invalid, parse_status(SweepStatus, invalid["status"]))


def test_an_attempts_config_is_a_new_one_and_the_admitted_config_is_untouched() -> None:
    cfg = admit_run("run", {"config": RUN_BASE}).config
    before = copy.deepcopy(cfg)
    st = RunStatus(run_id="run-abc123", mlflow_run_id="m1")
    out = reconcile.attempt_config(cfg, st, "http://mlflow:5000", "parent-1")
    assert cfg == before and out is not cfg and out.tracking is not cfg.tracking
    assert (out.run_id, out.tracking.uri, out.tracking.mlflow_run_id, out.tracking.mlflow_parent_run_id) == (
        "run-abc123",
        "http://mlflow:5000",
        "m1",
        "parent-1",
    )
    assert not out.tracking.await_run_id  # the run is named: nothing to wait for
    pending = reconcile.attempt_config(cfg, RunStatus(run_id="run-abc123"), "http://mlflow:5000", "parent-1")
    assert pending.tracking.await_run_id and pending.tracking.mlflow_run_id is None
    assert not reconcile.attempt_config(cfg, RunStatus(run_id="run-abc123"), None, None).tracking.await_run_id


class FakeKube:
    """Records status patches and events; the only calls _tracking_failed makes."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []

    def patch_status(self, resource: str, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.patches.append(body)

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason))


def _run_obj() -> dict[str, Any]:
    meta = {"name": "r", "namespace": "ns", "uid": "u-1", "generation": 1}
    return {"metadata": {**meta, "annotations": {reconcile.ANNOTATION_PARENT_RUN: "parent-1"}}, "status": {}}


def _pool(monkeypatch, create) -> tuple[list, threading.Event]:
    """A fresh MLflow pool whose sweep index starts empty and whose creations go to `create`;
    the event is set when the pool asks for the run's pass again."""
    searches: list[str] = []
    monkeypatch.setattr(reconcile.tracking, "_child_runs", reconcile.tracking.ChildRuns(workers=1))
    monkeypatch.setattr(
        reconcile.mlflow_runs, "child_runs", lambda uri, exp, parent: searches.append(parent) or {}
    )
    monkeypatch.setattr(reconcile.mlflow_runs, "create_child_run", create)
    again = threading.Event()
    monkeypatch.setattr(reconcile, "_rerun", lambda *args: again.set())
    return searches, again


def test_the_child_run_is_made_off_the_pass_only_when_tracked_and_not_yet_known(monkeypatch) -> None:
    calls: list[tuple[str, str | None]] = []

    def create(uri, experiment, point, parent):
        calls.append((point.name, parent))
        return "child-1"

    searches, again = _pool(monkeypatch, create)
    cfg, settings = admit_run("r", {"config": RUN_BASE}).config, Settings(preflight=False)
    kube = FakeKube()
    assert reconcile._child_run(kube, _run_obj(), cfg, None, None, settings) == (None, None)  # not tracked
    assert reconcile._child_run(kube, _run_obj(), cfg, "known", "http://m", settings) == ("known", None)
    assert calls == []
    assert reconcile._child_run(kube, _run_obj(), cfg, None, "http://m", settings) == (None, None)  # pending
    assert again.wait(10)  # the pool's try ended: the run's pass runs again
    assert reconcile._child_run(kube, _run_obj(), cfg, None, "http://m", settings) == ("child-1", None)
    assert calls == [("r", "parent-1")] and searches == ["parent-1"]
    again.clear()
    assert reconcile._child_run(kube, _run_obj(), cfg, None, "http://m", settings) == (None, None)
    assert again.wait(10)
    # asked again (status lost the id): found in the sweep's index, neither searched nor created again
    assert reconcile._child_run(kube, _run_obj(), cfg, None, "http://m", settings) == ("child-1", None)
    assert calls == [("r", "parent-1")] and searches == ["parent-1"]


def test_mlflow_unreachable_marks_tracking_not_ready_and_is_tried_again(monkeypatch) -> None:
    def down(*args):
        raise reconcile.mlflow_runs.TrackingUnavailable("connection refused")

    _, again = _pool(monkeypatch, down)
    cfg, kube, settings = admit_run("r", {"config": RUN_BASE}).config, FakeKube(), Settings(preflight=False)
    assert reconcile._child_run(kube, _run_obj(), cfg, None, "http://m", settings) == (None, None)
    assert again.wait(10)
    assert reconcile._child_run(kube, _run_obj(), cfg, None, "http://m", settings) == (
        None,
        "connection refused",
    )
    again.clear()
    assert reconcile._child_run(kube, _run_obj(), cfg, None, "http://m", settings) == (
        None,
        None,
    )  # a new try
    assert again.wait(10)

    st = RunStatus()
    events = reconcile._untracked(st, "connection refused", 1, "2027-01-01T00:00:00Z", settings)
    (condition,) = st.conditions
    assert (condition.type, condition.status, condition.reason) == (
        "TrackingReady",
        "False",
        "MLflowUnreachable",
    )
    assert [(t, r) for t, r, _ in events] == [("Warning", "MLflowUnreachable")]
    assert (
        reconcile._untracked(st, "connection refused", 1, "2027-01-01T00:00:01Z", settings) == []
    )  # one per outage


def test_preflight_runs_only_before_the_first_rayjob(monkeypatch) -> None:
    monkeypatch.setattr(reconcile, "check_run", lambda cfg: ["model.llm_weights: s3://w does not exist"])
    admitted = admit_run("r", {"config": RUN_BASE})
    cfg, spec, on = admitted.config, admitted.spec, Settings(preflight=True)
    assert reconcile._preflight(cfg, RunStatus(), None, spec, on) == (
        "model.llm_weights: s3://w does not exist",
    )
    assert reconcile._preflight(cfg, RunStatus(attempt=1), None, spec, on) is None
    assert reconcile._preflight(cfg, RunStatus(), {"metadata": {}}, spec, on) is None
    assert reconcile._preflight(cfg, RunStatus(), None, spec, Settings(preflight=False)) is None
