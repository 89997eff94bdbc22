"""Sweep expansion: points, their specs, child plans on axis edits, and admission order."""

from __future__ import annotations

import copy

from sphinxx.jobs import config as run_config
from sphinxx.operator import expand, names
from sphinxx.operator.spec import validate_run, validate_sweep
from tests.services.kmock_server import merge_patch  # the emulator's RFC 7386, not ours


def _sweep(spec: dict, name: str = "demo") -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "uid": "uid-1"}, "spec": spec}


BASE = {"storage": {"uri": "s3://bucket/sweeps"}, "train": {"steps": 100}}
RAW = {
    "base": BASE,
    "axes": {"models": ["tinyllama-1.1b", "debug"], "dataFractions": [1.0, 0.25]},
    "overrides": {"tinyllama-1.1b": {"minWorkers": 2, "maxWorkers": 4, "zeroStage": 3, "cpu": "16"}},
    "maxParallelRuns": 2,
    "failurePolicy": {"maxRetries": 1},
}


def _children(raw: dict) -> list[dict]:
    spec = validate_sweep("demo", raw)
    return [expand.child_manifest(_sweep(raw), raw, p) for p in expand.points("demo", spec)]


def test_points_are_ordered_smallest_first() -> None:
    points = expand.points("demo", validate_sweep("demo", RAW))
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
    assert cfg.parallel.zero_stage == 3 and (spec.min_workers, spec.max_workers) == (2, 4)
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
    ordered = expand.points("demo", validate_sweep("demo", RAW))
    children = {c["metadata"]["name"]: c for c in _children(RAW)}
    assert expand.admit(ordered, children, 2) == ["demo-debug-d25", "demo-debug-d100"]
    assert expand.admit(ordered, children, 0) == [p.name for p in ordered]
    for name in ("demo-debug-d25", "demo-debug-d100"):
        children[name]["metadata"]["annotations"] = {names.ANNOTATION_ADMITTED: "t"}
    assert expand.admit(ordered, children, 2) == []
    children["demo-debug-d25"]["status"] = {"phase": "Succeeded"}
    assert expand.admit(ordered, children, 2) == ["demo-tinyllama-1-1b-d25"]
