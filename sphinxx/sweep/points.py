"""Sweep expansion: a ScalingSweep -> one point (a TrainingRun spec) per (model size, data fraction).

Pure, torch-free, and the same on a cluster (`sphinxx.operator` turns each point into a
TrainingRun object) and on a laptop (`sphinxx sweep run --local` runs each point's job itself),
so one sweep file gives the same points, names and configs in both places.

Config of a point = the model's preset (when the base names no `preset:`) <- `spec.base`
<- `spec.overrides.<size>.config` (deep-merged: objects merge key by key, lists and scalars
replace) <- the point's model and data fraction <- the per-size shortcuts (`zeroStage`, ...).
Its pods: `spec.resources` <- `spec.overrides.<size>.resources` (deep-merged the same way) <- the
size's `workersPerPod`, `cpu`, `memory`.

`admit_sweep` admits the sweep and *every point it expands to* with the job's own checks
(`sphinxx.schema.admission.admit_run`): a sweep is refused before any point exists if any
point would be refused, and the error names the sweep field that caused it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sphinxx.schema.admission import admit_run, check_name, memo, resolve_layer
from sphinxx.schema.credentials import refuse_credentials
from sphinxx.schema.documents import load_yaml_all, read_document
from sphinxx.schema.fields import Naming, SchemaError, deep_merge, has_path, parse
from sphinxx.schema.flavors import FLAVORS
from sphinxx.schema.manifests import kind_of, name_of
from sphinxx.schema.pods import check_pods
from sphinxx.schema.resources import AXIS_FIELDS, SHORTCUTS, Resources, ScalingSweepSpec, SizeOverride
from sphinxx.schema.run import RunConfig, preset_names

# Run ids get a hash suffix of 9 characters (operator) and must stay within 63: a point name
# leaves room for it.
MAX_POINT_NAME = 63 - 9
CAMEL = Naming.CAMEL
RESOURCE_SHORTCUTS = ("workers_per_pod", "cpu", "memory")  # a size's shortcuts into its pods' resources


@dataclass(frozen=True)
class Point:
    model: str
    fraction: float
    name: str

    @property
    def order(self) -> tuple[float, float, str]:
        flavor = FLAVORS.get(self.model)
        return (flavor.params if flavor else float("inf"), self.fraction, self.name)


def _hash(*parts: object, length: int = 6) -> str:
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()[:length]


def fraction_code(fraction: float) -> str:
    """0.25 -> '25', 1.0 -> '100', 0.125 -> '12p5': a data fraction as a name-safe percentage."""
    percent = f"{fraction * 100:.4f}".rstrip("0").rstrip(".")
    return percent.replace(".", "p")


def point_name(sweep: str, model: str, fraction: float) -> str:
    """Name of one point: `<sweep>-<model>-d<percent>`, hashed when too long."""
    suffix = f"-{model.replace('.', '-')}-d{fraction_code(fraction)}"
    name = f"{sweep}{suffix}"
    if len(name) <= MAX_POINT_NAME:
        return name
    tail = f"-{_hash(sweep, model, fraction)}"
    head = sweep[: MAX_POINT_NAME - len(suffix) - len(tail)].rstrip("-.")
    return (head + suffix + tail)[:MAX_POINT_NAME]


def points(sweep: str, spec: ScalingSweepSpec) -> list[Point]:
    """All points, smallest model and smallest data first."""
    out = [
        Point(model, fraction, point_name(sweep, model, fraction))
        for model in spec.axes.models
        for fraction in spec.axes.data_fractions
    ]
    return sorted(out, key=lambda p: p.order)


def point_spec(raw: dict[str, Any], point: Point) -> dict[str, Any]:
    """The TrainingRun spec (camelCase) of one point, from the sweep's raw spec."""
    override = (raw.get("overrides") or {}).get(point.model) or {}
    config = deep_merge(raw.get("base") or {}, override.get("config") or {})
    if "preset" not in config and point.model in preset_names():
        config["preset"] = point.model
    config.setdefault("model", {})["flavor"] = point.model
    config.setdefault("data", {})["fraction"] = point.fraction
    for key, target in SHORTCUTS.items():
        if key in ("min_workers", "max_workers"):
            continue  # the TrainingRun's own fields
        value = override.get(CAMEL.key(key))
        if value is not None:
            section, name = target.split(".")
            config.setdefault(section, {})[name] = value
    out: dict[str, Any] = {"config": config}
    for key in ("minWorkers", "maxWorkers"):
        if override.get(key) is not None:
            out[key] = override[key]
    # A size's pod settings merge over the sweep's: objects key by key, lists replaced.
    resources = deep_merge(raw.get("resources") or {}, override.get("resources") or {})
    for key in ("workersPerPod", "cpu", "memory"):
        if override.get(key) is not None:
            resources[key] = override[key]
    if resources:
        out["resources"] = resources
    for key in ("failurePolicy", "queueName", "deletePolicy"):
        if raw.get(key) is not None:
            out[key] = copy.deepcopy(raw[key])
    if raw.get("suspend"):
        out["suspend"] = True  # no key otherwise: a point's own suspend is its own
    return out


def _check_override(model: str, override: SizeOverride) -> None:
    """A size's config layer may not move the point off its axes or fight its own shortcuts; its pod
    settings are checked as a `Resources` of their own (errors name the size's field)."""
    path = f"spec.overrides.{model}"
    parsed = parse(Resources, override.resources, f"{path}.resources", CAMEL)
    check_pods(parsed, f"{path}.resources")
    for key in RESOURCE_SHORTCUTS:
        if getattr(override, key) is not None and CAMEL.key(key) in override.resources:
            raise SchemaError(
                f"{path}.resources.{CAMEL.key(key)}",
                f"conflicts with {path}.{CAMEL.key(key)}; set only one of the two",
            )
    for dotted, owner in AXIS_FIELDS.items():
        if has_path(override.config, dotted):
            raise SchemaError(f"{path}.config.{dotted}", f"is set by {owner}, not per size")
    for shortcut, dotted in SHORTCUTS.items():
        if getattr(override, shortcut) is not None and has_path(override.config, dotted):
            raise SchemaError(
                f"{path}.config.{dotted}",
                f"conflicts with {path}.{CAMEL.key(shortcut)}; set only one of the two",
            )


@dataclass(frozen=True)
class AdmittedSweep:
    """A sweep that may run: its parsed spec and its resolved base config (tracking, experiment).
    Read-only."""

    spec: ScalingSweepSpec
    base: RunConfig


@memo
def _admit_spec(name: str, raw: Any, base_layer: Any) -> AdmittedSweep:
    check_name(name)
    refuse_credentials(raw, "spec")
    spec = parse(ScalingSweepSpec, raw, "spec", CAMEL)
    check_pods(spec.resources, "spec.resources")
    base = resolve_layer(base_layer, "spec.base")
    for model, override in spec.overrides.items():
        if model not in spec.axes.models:
            raise SchemaError(f"spec.overrides.{model}", f"is not one of spec.axes.models {spec.axes.models}")
        _check_override(model, override)
    return AdmittedSweep(spec, base)


def admit_sweep(
    name: str, raw: Any, apply_defaults: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> AdmittedSweep:
    """The sweep, admitted with every point it expands to (see the module docstring).

    `apply_defaults` adds what the runner fills into every TrainingRun spec it creates (the
    operator's chart defaults; the local runner's storage and tracking), so a point is admitted
    exactly as it will run; the base is admitted as a run of its own with the same defaults.
    """
    base = raw.get("base") if isinstance(raw, dict) else None
    if apply_defaults is not None and isinstance(base, (dict, type(None))):
        base = apply_defaults({"config": base or {}}).get("config")
    admitted = _admit_spec(name, raw, base if base is not None else {})
    spec = admitted.spec
    seen: dict[str, Point] = {}
    for point in points(name, spec):
        if point.name in seen:
            other = seen[point.name]
            raise SchemaError(
                "spec.axes.dataFractions",
                f"{other.fraction} and {point.fraction} give the same point name {point.name}; "
                "use fewer decimals",
            )
        seen[point.name] = point
        child = point_spec(raw, point)
        try:
            admit_run(point.name, apply_defaults(child) if apply_defaults else child)
        except SchemaError as err:
            raise _where(err, raw, spec, point) from None
    return admitted


def _where(err: SchemaError, raw: dict[str, Any], spec: ScalingSweepSpec, point: Point) -> SchemaError:
    """A point's error, named at the sweep field the user wrote."""
    detail = err.path.removeprefix("spec.config.").removeprefix("spec.")
    override = (raw.get("overrides") or {}).get(point.model) or {}
    label = f"point {point.model} x {point.fraction}"
    if err.path.startswith("spec.config.") and has_path(override.get("config"), detail):
        return SchemaError(f"spec.overrides.{point.model}.config.{detail}", f"{label}: {err.reason}")
    for shortcut, dotted in SHORTCUTS.items():
        if detail in (dotted, CAMEL.key(shortcut)) and override.get(CAMEL.key(shortcut)) is not None:
            return SchemaError(
                f"spec.overrides.{point.model}.{CAMEL.key(shortcut)}", f"{label}: {err.reason}"
            )
    if err.path.startswith("spec.resources.") and has_path(
        override.get("resources"), detail.removeprefix("resources.")
    ):
        return SchemaError(f"spec.overrides.{point.model}.{detail}", f"{label}: {err.reason}")
    where = f"spec.overrides.{point.model}" if point.model in spec.overrides else "spec.base"
    return SchemaError(where, f"{label}: {detail}: {err.reason}")


def read_sweep(path: str) -> tuple[str, dict[str, Any]]:
    """(sweep name, raw spec) from a ScalingSweep manifest file (`plan` admits it)."""
    # The one safe reader (sphinxx.schema.documents): bounded size, aliases and depth, no duplicate keys.
    docs = [d for d in load_yaml_all(read_document(path, "sweep file"), path) if d]
    named = [(f"document {i}", d) for i, d in enumerate(docs, 1)]
    sweeps = [(where, d) for where, d in named if kind_of(d, where) == "ScalingSweep"]
    if len(sweeps) != 1:
        raise SchemaError("kind", f"{path} must hold exactly one ScalingSweep; found {len(sweeps)}")
    where, doc = sweeps[0]
    return name_of(doc, where), doc.get("spec") or {}


def plan(
    name: str, raw: dict[str, Any], apply_defaults: Callable[[dict[str, Any]], dict[str, Any]]
) -> list[tuple[Point, RunConfig]]:
    """Every point's run config as its job reads it (run id: the point's name), smallest first.

    `apply_defaults` is what the runner fills into each point's spec: the local runner's storage
    and tracking, or the operator's chart defaults (`sphinxx doctor SWEEP_FILE`).
    """
    admitted = admit_sweep(name, raw, apply_defaults)
    out = []
    for point in points(name, admitted.spec):
        cfg = admit_run(point.name, apply_defaults(point_spec(raw, point))).config
        out.append((point, dataclasses.replace(cfg, run_id=point.name)))
    return out
