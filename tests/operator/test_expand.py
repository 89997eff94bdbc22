"""Sweep expansion: points, their specs, child plans on axis edits, and admission order."""

from __future__ import annotations

import copy

import pytest

from sphinxx.operator import expand, names
from sphinxx.schema import run as run_config
from sphinxx.schema.admission import admit_run
from sphinxx.schema.fields import SchemaError
from sphinxx.sweep import points as sweep_points
from sphinxx.sweep.points import admit_sweep
from tests.schema.corpus import DATA
from tests.services.kmock_server import merge_patch  # the emulator's RFC 7386, not ours


def validate_sweep(name: str, raw: dict):
    return admit_sweep(name, raw).spec


def validate_run(name: str, spec: dict):
    admitted = admit_run(name, spec)
    return admitted.spec, admitted.config


def _sweep(spec: dict, name: str = "demo") -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "uid": "uid-1"}, "spec": spec}


BASE = {"storage": {"uri": "s3://bucket/sweeps"}, "train": {"steps": 100}, "data": DATA}
RAW = {
    "base": BASE,
    "axes": {"models": ["tinyllama-1.1b", "debug"], "dataFractions": [1.0, 0.25]},
    "overrides": {"tinyllama-1.1b": {"minWorkers": 2, "maxWorkers": 4, "zeroStage": 1, "cpu": "16"}},
    "maxParallelRuns": 2,
    "failurePolicy": {"maxRetries": 1},
}


def _children(raw: dict) -> list[dict]:
    spec = validate_sweep("demo", raw)
    return [expand.child_manifest(_sweep(raw), raw, p) for p in sweep_points.points("demo", spec)]


def test_points_are_ordered_smallest_first() -> None:
    points = sweep_points.points("demo", validate_sweep("demo", RAW))
    assert [(p.model, p.fraction) for p in points] == [
        ("debug", 0.25),
        ("debug", 1.0),
        ("tinyllama-1.1b", 0.25),
        ("tinyllama-1.1b", 1.0),
    ]


def test_children_carry_labels_owner_and_their_point() -> None:
    children = {c["metadata"]["name"]: c for c in _children(RAW)}
    child = children["demo-tinyllama-1-1b-d25"]
    assert child["metadata"]["labels"] == {
        names.LABEL_SWEEP: "demo",
        names.LABEL_MODEL: "tinyllama-1.1b",
        names.LABEL_FRACTION: "0.25",
        names.LABEL_MANAGED_BY: names.MANAGER,
    }
    owner = child["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ScalingSweep", "uid-1", True)
    spec, cfg = validate_run(child["metadata"]["name"], child["spec"])
    # Model preset (the base names none) <- base <- point <- override.
    preset = run_config.load_config(preset="tinyllama-1.1b", data={"storage": BASE["storage"]})
    assert cfg.model.flavor == "tinyllama-1.1b" and cfg.data.fraction == 0.25
    assert cfg.train.lr == preset.train.lr and cfg.train.steps == 100
    assert cfg.parallel.zero_stage == 1 and (cfg.parallel.min_workers, cfg.parallel.max_workers) == (2, 4)
    assert spec.resources.cpu == "16" and spec.failure_policy.max_retries == 1
    debug = children["demo-debug-d100"]["spec"]
    assert "minWorkers" not in debug and "cpu" not in debug.get("resources", {})
    assert debug["config"]["preset"] == "debug"


def test_axis_edit_adds_and_removes_points_only() -> None:
    before = _children(RAW)
    edited = copy.deepcopy(RAW)
    edited["axes"]["dataFractions"] = [1.0, 0.5]
    plan = expand.plan_children(_children(edited), before)
    assert sorted(c["metadata"]["name"] for c in plan.create) == ["demo-debug-d50", "demo-tinyllama-1-1b-d50"]
    assert plan.delete == ["demo-debug-d25", "demo-tinyllama-1-1b-d25"]
    assert plan.update == {}


def test_override_edit_patches_only_that_size() -> None:
    before = _children(RAW)
    edited = copy.deepcopy(RAW)
    edited["overrides"]["tinyllama-1.1b"]["maxWorkers"] = 8
    del edited["overrides"]["tinyllama-1.1b"]["cpu"]
    plan = expand.plan_children(_children(edited), before)
    assert not plan.create and not plan.delete
    assert sorted(plan.update) == ["demo-tinyllama-1-1b-d100", "demo-tinyllama-1-1b-d25"]
    old = next(c for c in before if c["metadata"]["name"] == "demo-tinyllama-1-1b-d25")
    new = next(c for c in _children(edited) if c["metadata"]["name"] == "demo-tinyllama-1-1b-d25")
    assert merge_patch(old["spec"], plan.update["demo-tinyllama-1-1b-d25"]) == new["spec"]


def test_admission_respects_max_parallel_in_order() -> None:
    ordered = sweep_points.points("demo", validate_sweep("demo", RAW))
    children = {c["metadata"]["name"]: c for c in _children(RAW)}
    assert expand.admit(ordered, children, 2) == ["demo-debug-d25", "demo-debug-d100"]
    assert expand.admit(ordered, children, 0) == [p.name for p in ordered]
    for name in ("demo-debug-d25", "demo-debug-d100"):
        children[name]["metadata"]["annotations"] = {names.ANNOTATION_ADMITTED: "t"}
    assert expand.admit(ordered, children, 2) == []
    children["demo-debug-d25"]["status"] = {"phase": "Succeeded"}
    assert expand.admit(ordered, children, 2) == ["demo-tinyllama-1-1b-d25"]


def test_points_being_created_are_admitted_in_the_same_pass() -> None:
    ordered = sweep_points.points("demo", validate_sweep("demo", RAW))
    names_in_order = [p.name for p in ordered]
    # Nothing exists yet: the first `max_parallel` new points are admitted as they are created.
    assert expand.admit(ordered, {}, 2, frozenset(names_in_order)) == names_in_order[:2]
    # A new point competes with existing unadmitted ones in size order, not creation order.
    children = {
        c["metadata"]["name"]: c for c in _children(RAW) if c["metadata"]["name"] != names_in_order[0]
    }
    assert expand.admit(ordered, children, 1, frozenset(names_in_order[:1])) == names_in_order[:1]
    # Without a free slot nothing new is admitted.
    for name in names_in_order[1:3]:
        children[name]["metadata"]["annotations"] = {names.ANNOTATION_ADMITTED: "t"}
    assert expand.admit(ordered, children, 2, frozenset(names_in_order[:1])) == []


def test_size_config_layer_merges_over_the_base() -> None:
    raw = copy.deepcopy(RAW)
    raw["base"] = {**BASE, "model": {"use_skip_token": False}}
    raw["overrides"]["tinyllama-1.1b"]["config"] = {
        "model": {"llm_weights": "s3://w/tinyllama-1.1b"},
        "data": {"tokenizer": "s3://w/tinyllama-1.1b"},
        "train": {"steps": 50},
    }
    children = {c["metadata"]["name"]: c for c in _children(raw)}
    _, tiny = validate_run("demo-tinyllama-1-1b-d25", children["demo-tinyllama-1-1b-d25"]["spec"])
    assert (
        tiny.model.llm_weights == "s3://w/tinyllama-1.1b" and tiny.data.tokenizer == "s3://w/tinyllama-1.1b"
    )
    # Merged key by key: the base's other model fields and the point's axes stay.
    assert tiny.model.use_skip_token is False and tiny.model.flavor == "tinyllama-1.1b"
    assert tiny.train.steps == 50 and tiny.data.fraction == 0.25 and tiny.parallel.zero_stage == 1
    _, debug = validate_run("demo-debug-d25", children["demo-debug-d25"]["spec"])
    assert debug.model.llm_weights is None and debug.train.steps == 100  # other sizes untouched


def test_size_config_errors_name_the_field_where_it_was_written() -> None:
    def error(config: dict) -> str:
        raw = copy.deepcopy(RAW)
        raw["overrides"]["tinyllama-1.1b"]["config"] = config
        with pytest.raises(SchemaError) as err:
            validate_sweep("demo", raw)
        return err.value.path

    assert error({"model": {"moe_kernel": "fast"}}) == "spec.overrides.tinyllama-1.1b.config.model.moe_kernel"
    assert error({"train": {"steps": -5}}) == "spec.overrides.tinyllama-1.1b.config.train.steps"
    assert error({"train": {"stepz": 5}}) == "spec.overrides.tinyllama-1.1b.config.train.stepz"
    with pytest.raises(SchemaError) as err:
        validate_sweep(
            "demo", {**RAW, "overrides": {"debug": {"config": {"model": {"flavor": "debug-moe"}}}}}
        )
    assert err.value.path == "spec.overrides.debug.config.model.flavor"
    with pytest.raises(SchemaError) as err:
        validate_sweep(
            "demo",
            {**RAW, "overrides": {"debug": {"zeroStage": 1, "config": {"parallel": {"zero_stage": 2}}}}},
        )
    assert err.value.path == "spec.overrides.debug.config.parallel.zero_stage"


def _suspend(child: dict, value: bool | None, marked: bool = False) -> dict:
    child = copy.deepcopy(child)
    if value is not None:
        child["spec"]["suspend"] = value
    if marked:
        child["metadata"]["annotations"] = {names.ANNOTATION_SUSPENDED_BY_SWEEP: "true"}
    return child


def test_sweep_suspend_forces_points_and_resumes_only_those_it_suspended() -> None:
    running = _children(RAW)
    assert all("suspend" not in c["spec"] for c in running)
    # One point paused by hand inside a running sweep: the sweep leaves it alone.
    by_hand = "demo-debug-d25"
    existing = [_suspend(c, True) if c["metadata"]["name"] == by_hand else c for c in running]
    plan = expand.plan_children(running, existing)
    assert plan.update == {} and plan.annotate == {}

    suspended = _children({**RAW, "suspend": True})
    plan = expand.plan_children(suspended, existing)
    others = sorted(c["metadata"]["name"] for c in running if c["metadata"]["name"] != by_hand)
    assert sorted(plan.update) == others and all(p == {"suspend": True} for p in plan.update.values())
    assert sorted(plan.annotate) == others  # marked: the sweep switched them
    after = [_suspend(c, True, marked=c["metadata"]["name"] in plan.annotate) for c in existing]
    assert expand.plan_children(suspended, after).update == {}
    # Points created while the sweep is suspended are suspended and marked.
    new = next(c for c in suspended if c["metadata"]["name"] == by_hand)
    assert new["spec"]["suspend"] is True
    assert new["metadata"]["annotations"] == {names.ANNOTATION_SUSPENDED_BY_SWEEP: "true"}

    resumed = expand.plan_children(running, after)
    assert sorted(resumed.update) == others and all(p == {"suspend": False} for p in resumed.update.values())
    assert resumed.annotate == {n: {names.ANNOTATION_SUSPENDED_BY_SWEEP: None} for n in others}
    assert by_hand not in resumed.update  # still paused: its own suspend
