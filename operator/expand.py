"""Sweep expansion: a ScalingSweep -> one TrainingRun per (model size, data fraction). Pure.

Every point is a TrainingRun with a deterministic name, the sweep's labels and an owner
reference to the sweep. Editing the axes adds and removes points; the others keep their specs
untouched (`plan_children` only patches what changed). `maxParallelRuns` admits points in a
stable order, smallest model and smallest data first (`admit`).

Config of a point = the model's preset (when the base names no `preset:`) <- `spec.base`
<- `spec.overrides.<size>.config` (deep-merged: objects merge key by key, lists and scalars
replace) <- the point's model and data fraction <- the per-size shortcuts (`zeroStage`, ...).

Suspend: while the sweep is suspended every point gets `spec.suspend: true`, and the points it
had to switch are marked (`sphinxx.dev/suspended-by-sweep`); unsuspending the sweep resumes
only the marked ones. Otherwise a point's own `spec.suspend` is the point's: the sweep neither
writes nor resets it, so one point can be paused by hand inside a running sweep.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from sphinxx.jobs import config as run_config

from . import names
from .settings import RunDefaults
from .spec import ScalingSweepSpec, SpecError, deep_merge, has_path, validate_run

# Nominal parameter counts: the order in which points start, and N of the scaling-law fit.
# (The exact counts live in sphinxx.model, which the operator may not import.)
NOMINAL_PARAMS = {
    "debug": 1e6,
    "debug-moe": 2e6,
    "tinyllama-1.1b": 1.1e9,
    "internlm2-7b": 7.7e9,
    "llama2-13b": 13.0e9,
    "mixtral-8x7b": 46.7e9,
}
TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Point:
    model: str
    fraction: float
    name: str

    @property
    def order(self) -> tuple[float, float, str]:
        return (NOMINAL_PARAMS.get(self.model, float("inf")), self.fraction, self.name)


def points(sweep: str, spec: ScalingSweepSpec) -> list[Point]:
    """All points, smallest first."""
    out = [
        Point(model, fraction, names.point_name(sweep, model, fraction))
        for model in spec.axes.models
        for fraction in spec.axes.data_fractions
    ]
    return sorted(out, key=lambda p: p.order)


def point_spec(raw: dict[str, Any], point: Point) -> dict[str, Any]:
    """The TrainingRun spec (camelCase dict) of one point, from the sweep's raw spec."""
    override = (raw.get("overrides") or {}).get(point.model) or {}
    config = deep_merge(raw.get("base") or {}, override.get("config") or {})
    if "preset" not in config and point.model in run_config.preset_names():
        config["preset"] = point.model
    config.setdefault("model", {})["flavor"] = point.model
    config.setdefault("data", {})["fraction"] = point.fraction
    parallel = {"gpusPerWorker": "gpus_per_worker", "zeroStage": "zero_stage", "epSize": "ep_size"}
    for key, target in parallel.items():
        if override.get(key) is not None:
            config.setdefault("parallel", {})[target] = override[key]
    out: dict[str, Any] = {"config": config}
    for key in ("minWorkers", "maxWorkers"):
        if override.get(key) is not None:
            out[key] = override[key]
    resources = copy.deepcopy(raw.get("resources") or {})
    for key in ("workersPerPod", "cpu", "memory"):
        if override.get(key) is not None:
            resources[key] = override[key]
    if resources:
        out["resources"] = resources
    for key in ("failurePolicy", "queueName", "deletePolicy"):
        if raw.get(key) is not None:
            out[key] = copy.deepcopy(raw[key])
    if raw.get("suspend"):
        out["suspend"] = True  # no key otherwise: a point's own suspend is its own (module doc)
    return out


def validate_points(
    sweep: str, spec: ScalingSweepSpec, raw: dict[str, Any], defaults: RunDefaults | None = None
) -> None:
    """Every point must be a valid run; errors name the sweep field that caused them.

    `defaults` are the operator's (settings.RunDefaults), which each point gets as a TrainingRun.
    """
    for point in points(sweep, spec):
        child = point_spec(raw, point)
        try:
            validate_run(point.name, defaults.apply_run(child) if defaults else child)
        except SpecError as err:
            detail = err.path.removeprefix("spec.config.").removeprefix("spec.")
            override = (raw.get("overrides") or {}).get(point.model) or {}
            if err.path.startswith("spec.config.") and has_path(override.get("config"), detail):
                # A field the size's own config layer set: name it where the user wrote it.
                where = f"spec.overrides.{point.model}.config.{detail}"
                raise SpecError(where, f"point {point.model} x {point.fraction}: {err.reason}") from None
            where = f"spec.overrides.{point.model}" if point.model in spec.overrides else "spec.base"
            raise SpecError(
                where, f"point {point.model} x {point.fraction}: {detail}: {err.reason}"
            ) from None


def child_manifest(sweep: dict[str, Any], raw: dict[str, Any], point: Point) -> dict[str, Any]:
    meta = sweep["metadata"]
    child = {
        "apiVersion": names.API_VERSION,
        "kind": "TrainingRun",
        "metadata": {
            "name": point.name,
            "namespace": meta["namespace"],
            "labels": {
                names.LABEL_SWEEP: meta["name"],
                names.LABEL_MODEL: point.model,
                names.LABEL_FRACTION: str(point.fraction),
                names.LABEL_MANAGED_BY: names.MANAGER,
            },
            "ownerReferences": [
                {
                    "apiVersion": names.API_VERSION,
                    "kind": "ScalingSweep",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": point_spec(raw, point),
    }
    if raw.get("suspend"):
        child["metadata"]["annotations"] = {names.ANNOTATION_SUSPENDED_BY_SWEEP: "true"}
    return child


def merge_diff(old: Any, new: Any) -> Any:
    """The JSON merge patch that turns `old` into `new` (removed keys become null)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return copy.deepcopy(new)
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        if key not in old:
            patch[key] = copy.deepcopy(value)
        elif old[key] != value:
            patch[key] = merge_diff(old[key], value)
    return patch


@dataclass
class ChildPlan:
    create: list[dict[str, Any]]
    update: dict[str, dict[str, Any]]  # name -> merge patch of the spec
    delete: list[str]
    # name -> merge patch of the annotations (the suspended-by-sweep mark; None removes it)
    annotate: dict[str, dict[str, Any]] = field(default_factory=dict)


def plan_children(desired: list[dict[str, Any]], existing: list[dict[str, Any]]) -> ChildPlan:
    """What to create, patch and delete so the children match the expansion."""
    have = {obj["metadata"]["name"]: obj for obj in existing}
    want = {obj["metadata"]["name"]: obj for obj in desired}
    update: dict[str, dict[str, Any]] = {}
    annotate: dict[str, dict[str, Any]] = {}
    for name, obj in want.items():
        if name not in have:
            continue
        old = copy.deepcopy(have[name].get("spec") or {})
        new = copy.deepcopy(obj["spec"])
        marked = names.ANNOTATION_SUSPENDED_BY_SWEEP in (have[name]["metadata"].get("annotations") or {})
        if new.get("suspend"):  # the sweep is suspended: force it, marking points it switches
            if not marked and not old.get("suspend"):
                annotate[name] = {names.ANNOTATION_SUSPENDED_BY_SWEEP: "true"}
        elif marked:  # the sweep resumed: resume what it suspended
            new["suspend"] = False
            annotate[name] = {names.ANNOTATION_SUSPENDED_BY_SWEEP: None}
        elif "suspend" in old:
            new["suspend"] = old["suspend"]  # the point's own: never reset
        if old != new:
            update[name] = merge_diff(old, new)
    return ChildPlan(
        create=[obj for name, obj in want.items() if name not in have],
        update=update,
        delete=sorted(name for name in have if name not in want),
        annotate=annotate,
    )


def admit(ordered: list[Point], children: dict[str, dict[str, Any]], max_parallel: int) -> list[str]:
    """Names of points to admit now: smallest first, at most `max_parallel` active (0 = no limit)."""

    def admitted(obj: dict[str, Any]) -> bool:
        return names.ANNOTATION_ADMITTED in ((obj.get("metadata") or {}).get("annotations") or {})

    def active(obj: dict[str, Any]) -> bool:
        return admitted(obj) and (obj.get("status") or {}).get("phase") not in TERMINAL_PHASES

    waiting = [p.name for p in ordered if p.name in children and not admitted(children[p.name])]
    if max_parallel <= 0:
        return waiting
    slots = max_parallel - sum(1 for obj in children.values() if active(obj))
    return waiting[: max(0, slots)]
