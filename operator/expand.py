"""A sweep's points as Kubernetes objects: one TrainingRun per point, kept in step with the axes.

The points themselves (names, order, each point's spec) come from the sweep core,
`sphinxx.sweep.points`, which the local runner uses too. Here they become TrainingRun
objects with the sweep's labels and an owner reference (`child_manifest`); editing the axes adds
and removes points while the others keep their specs (`plan_children` patches only what
changed); `maxParallelRuns` admits points in the stable order, smallest first (`admit`). Pure.

Suspend: while the sweep is suspended every point gets `spec.suspend: true`, and the points it
had to switch are marked (`sphinxx.dev/suspended-by-sweep`); unsuspending the sweep resumes
only the marked ones. Otherwise a point's own `spec.suspend` is the point's: the sweep neither
writes nor resets it, so one point can be paused by hand inside a running sweep.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from sphinxx.schema.status import TERMINAL_RUN_PHASES
from sphinxx.sweep.points import Point, point_spec

from . import names


def child_manifest(sweep: dict[str, Any], raw: dict[str, Any], point: Point) -> dict[str, Any]:
    meta = sweep["metadata"]
    child: dict[str, Any] = {
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


def admit(
    ordered: list[Point],
    children: dict[str, dict[str, Any]],
    max_parallel: int,
    creating: frozenset[str] = frozenset(),
) -> list[str]:
    """Names of points to admit now: smallest first, at most `max_parallel` active (0 = no limit).

    Points about to be created (`creating`) compete for the slots too, so a new point is created
    already admitted when a slot is free, instead of waiting for the sweep's next pass.
    """

    def admitted(obj: dict[str, Any]) -> bool:
        return names.ANNOTATION_ADMITTED in ((obj.get("metadata") or {}).get("annotations") or {})

    def active(obj: dict[str, Any]) -> bool:
        return admitted(obj) and (obj.get("status") or {}).get("phase") not in TERMINAL_RUN_PHASES

    waiting = [
        p.name
        for p in ordered
        if p.name in creating or (p.name in children and not admitted(children[p.name]))
    ]
    if max_parallel <= 0:
        return waiting
    slots = max_parallel - sum(1 for obj in children.values() if active(obj))
    return waiting[: max(0, slots)]
