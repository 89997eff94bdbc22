"""Typed specs of our custom resources, parsed and validated once, with the field path on every error.

`ScalingSweep` and `TrainingRun` specs are dataclasses whose field metadata (help text and
constraints) feed both the CRD's OpenAPI schema (crds.py) and `parse()`, so `kubectl apply` on a
schema-enforcing cluster and the operator's own re-validation agree. The run config inside
(`spec.config` of a run, `spec.base` of a sweep) is the job's own schema, `sphinxx.jobs.config`,
validated by the same `load_config` the job uses.

Python fields are snake_case; the Kubernetes objects use camelCase (`camel()`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from sphinxx.jobs import config as run_config

DELETE_POLICIES = ("Keep", "Delete")
# Label values (sweep and run names are copied into labels) are at most 63 characters.
MAX_NAME = 63


class SpecError(ValueError):
    """An invalid custom resource; `path` is the field path at fault (`spec.axes.models[1]`)."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def _memo(fn):
    """Cache a validation by the JSON of its arguments: resolving a run config costs tens of
    milliseconds (omegaconf), and every timer tick of every object would pay it again. Errors
    are cached too. Callers treat the returned dataclasses as read-only."""

    @functools.lru_cache(maxsize=16384)
    def cached(key: str):
        try:
            return fn(*json.loads(key)), None
        except SpecError as err:
            return None, err

    @functools.wraps(fn)
    def wrapper(*args):
        result, error = cached(json.dumps(args, sort_keys=True, default=str))
        if error is not None:
            raise SpecError(error.path, error.reason)
        return result

    return wrapper


def _f(default: Any = dataclasses.MISSING, help: str = "", **constraints: Any) -> Any:
    meta = {"help": help, **constraints}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass
class FailurePolicy:
    max_retries: int = _f(3, "automatic new attempts after a failed one (each resumes from S3)", minimum=0)
    backoff_seconds: float = _f(30.0, "wait before the first retry; doubles with every retry", minimum=0)
    max_backoff_seconds: float = _f(600.0, "upper bound of the wait between attempts", minimum=0)
    active_deadline_seconds: int | None = _f(
        None, "fail an attempt that runs longer than this (KubeRay activeDeadlineSeconds)", minimum=1
    )


@dataclass
class Resources:
    image: str | None = _f(None, "container image with sphinxx installed; default: the operator's --image")
    workers_per_pod: int = _f(1, "Ray Train workers per worker pod (one per GPU)", minimum=1)
    cpu: str = _f("8", "CPU request of a worker pod (a Kubernetes quantity)")
    memory: str = _f("64Gi", "memory request and limit of a worker pod")
    head_cpu: str = _f("4", "CPU request of the Ray head pod")
    head_memory: str = _f("16Gi", "memory request and limit of the Ray head pod")
    node_selector: dict[str, str] = _f({}, "node selector of the worker pods (e.g. a GPU type)")
    tolerations: list[dict[str, Any]] = _f([], "tolerations of the worker pods")
    env_from_secrets: list[str] = _f(
        [], "Secrets exposed as environment to every pod (credentials by reference)"
    )
    service_account: str | None = _f(None, "service account of the pods (e.g. for IRSA)")


@dataclass
class TrainingRunSpec:
    config: dict[str, Any] = _f({}, "the run config (sphinxx.jobs.config schema); `preset:` names a base")
    min_workers: int | None = _f(
        None, "elastic lower bound of workers; default config.parallel.min_workers", minimum=1
    )
    max_workers: int | None = _f(
        None, "elastic upper bound of workers; default config.parallel.max_workers", minimum=1
    )
    resources: Resources = field(default_factory=Resources, metadata={"help": "pods of the RayCluster"})
    failure_policy: FailurePolicy = field(
        default_factory=FailurePolicy, metadata={"help": "retries and deadlines"}
    )
    suspend: bool = _f(False, "stop the running attempt (keeping its checkpoints) and start none")
    queue_name: str | None = _f(None, "Kueue LocalQueue; the RayJob then waits for admission")
    delete_policy: str = _f(
        "Keep", "on deletion, Keep or Delete checkpoints and the MLflow run", enum=DELETE_POLICIES
    )


@dataclass
class SizeOverride:
    min_workers: int | None = _f(None, "elastic lower bound for this model size", minimum=1)
    max_workers: int | None = _f(None, "elastic upper bound for this model size", minimum=1)
    gpus_per_worker: int | None = _f(None, "GPUs per worker", minimum=0)
    zero_stage: int | None = _f(None, "DeepSpeed ZeRO stage", enum=(0, 1, 2, 3))
    ep_size: int | None = _f(None, "expert-parallel size (MoE sizes)", minimum=1)
    workers_per_pod: int | None = _f(None, "workers per worker pod", minimum=1)
    cpu: str | None = _f(None, "CPU request of a worker pod")
    memory: str | None = _f(None, "memory of a worker pod")
    config: dict[str, Any] = _f(
        {},
        "run-config fields for this size (sphinxx.jobs.config schema), deep-merged over spec.base, "
        "e.g. model.llm_weights",
    )


# Set per point by the axes (or chosen through spec.base): a size's config layer may not set them.
AXIS_FIELDS = {
    "preset": "spec.base.preset",
    "model.flavor": "spec.axes.models",
    "data.fraction": "spec.axes.dataFractions",
}
# Per-size shortcuts and the config fields they set: one size sets each through one of the two.
SHORTCUTS = {
    "min_workers": "parallel.min_workers",
    "max_workers": "parallel.max_workers",
    "gpus_per_worker": "parallel.gpus_per_worker",
    "zero_stage": "parallel.zero_stage",
    "ep_size": "parallel.ep_size",
}


@dataclass
class Axes:
    models: list[str] = _f([], "model flavors (the size axis)", minItems=1, items_enum=run_config.FLAVORS)
    data_fractions: list[float] = _f(
        [], "data fractions in (0, 1] (the data axis)", minItems=1, items_exclusiveMinimum=0, items_maximum=1
    )


@dataclass
class ScalingSweepSpec:
    base: dict[str, Any] = _f({}, "the base run config (sphinxx.jobs.config schema); `preset:` names a base")
    axes: Axes = field(default_factory=Axes, metadata={"help": "model sizes x data fractions"})
    overrides: dict[str, SizeOverride] = _f(
        {}, "per model size: workers, GPUs, ZeRO stage, EP size, pod size"
    )
    max_parallel_runs: int = _f(0, "points running at once (smallest first); 0 = no limit", minimum=0)
    failure_policy: FailurePolicy = field(default_factory=FailurePolicy, metadata={"help": "for every point"})
    resources: Resources = field(default_factory=Resources, metadata={"help": "pods of every point"})
    suspend: bool = _f(False, "suspend every point (running ones stop, keeping checkpoints)")
    queue_name: str | None = _f(None, "Kueue LocalQueue for every point")
    delete_policy: str = _f("Keep", "passed to every point", enum=DELETE_POLICIES)


# ---------------------------------------------------------------------------------- parsing


def parse(cls: type, data: Any, path: str) -> Any:
    """A dataclass instance from camelCase data; unknown keys, wrong types, bad values raise SpecError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(path, f"must be an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {camel(f.name): f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise SpecError(f"{path}.{key}", f"unknown field; known fields: {', '.join(sorted(known))}")
    values = {}
    for key, f in known.items():
        if key in data:
            values[f.name] = _value(hints[f.name], data[key], f"{path}.{key}", f.metadata)
    return cls(**values)


def _value(tp: Any, value: Any, path: str, meta: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise SpecError(path, f"must be a list, got {type(value).__name__}")
        if len(value) < meta.get("minItems", 0):
            raise SpecError(path, f"must have at least {meta['minItems']} item(s)")
        item_meta = {k[len("items_") :]: v for k, v in meta.items() if k.startswith("items_")}
        return [_value(args[0], item, f"{path}[{i}]", item_meta) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SpecError(path, f"must be an object, got {type(value).__name__}")
        return {k: _value(args[1], v, f"{path}.{k}", {}) for k, v in value.items()}
    _check_scalar(tp, value, path)
    _check_constraints(value, path, meta)
    return float(value) if tp is float else value


def _check_scalar(tp: Any, value: Any, path: str) -> None:
    if tp is Any:
        return
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        str: isinstance(value, str),
    }[tp]
    if not ok:
        names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
        raise SpecError(path, f"must be {names[tp]}, got {value!r}")


def _check_constraints(value: Any, path: str, meta: Any) -> None:
    if "enum" in meta and value not in meta["enum"]:
        raise SpecError(path, f"must be one of {', '.join(map(str, meta['enum']))}; got {value!r}")
    if "minimum" in meta and value < meta["minimum"]:
        raise SpecError(path, f"must be >= {meta['minimum']}; got {value!r}")
    if "maximum" in meta and value > meta["maximum"]:
        raise SpecError(path, f"must be <= {meta['maximum']}; got {value!r}")
    if "exclusiveMinimum" in meta and value <= meta["exclusiveMinimum"]:
        raise SpecError(path, f"must be > {meta['exclusiveMinimum']}; got {value!r}")


# ------------------------------------------------------------------------------ validation


def deep_merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """`layer` over `base`: objects merge key by key, anything else (lists too) is replaced."""
    out = copy.deepcopy(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def has_path(config: Any, dotted: str) -> bool:
    """Whether `config` sets the field at `dotted` (`model.llm_weights`; list indexes end the walk)."""
    node: Any = config
    for key in dotted.split("."):
        key = key.split("[", 1)[0]
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def check_override_config(model: str, override: SizeOverride) -> None:
    """A size's config layer may not move the point off its axes or fight its own shortcuts."""
    path = f"spec.overrides.{model}"
    for dotted, owner in AXIS_FIELDS.items():
        if has_path(override.config, dotted):
            raise SpecError(f"{path}.config.{dotted}", f"is set by {owner}, not per size")
    for shortcut, dotted in SHORTCUTS.items():
        if getattr(override, shortcut) is not None and has_path(override.config, dotted):
            raise SpecError(
                f"{path}.config.{dotted}", f"conflicts with {path}.{camel(shortcut)}; set only one of the two"
            )


def check_name(name: str, path: str = "metadata.name") -> None:
    if len(name) > MAX_NAME:
        raise SpecError(
            path, f"must be at most {MAX_NAME} characters (it becomes a label value); got {len(name)}"
        )
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name):
        raise SpecError(path, f"must be lower-case letters, digits, '-' or '.'; got {name!r}")


def resolve_config(
    data: dict[str, Any], path: str, overrides: list[str] | None = None
) -> run_config.RunConfig:
    """The job's own validation, with its field path moved under `path`.

    A sweep's points differ from each other only in flavor and data fraction. Resolving a config
    through omegaconf costs tens of milliseconds, so the fraction is applied afterwards to a cached
    resolution of the rest, and the result checked by the same `validate()` that load_config runs:
    a 1,000-point sweep then resolves one config per model instead of one per point.
    """
    if not isinstance(data, dict):
        raise SpecError(path, f"must be an object, got {type(data).__name__}")
    section = data.get("data")
    fraction = section.get("fraction") if isinstance(section, dict) else None
    if overrides or not isinstance(fraction, (int, float)) or isinstance(fraction, bool):
        return _resolve(data, path, overrides)
    rest = {**data, "data": {k: v for k, v in section.items() if k != "fraction"}}
    cfg = _resolve(rest, path, None)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fraction=float(fraction)))
    _check(cfg, path)
    return cfg


def _check(cfg: run_config.RunConfig, path: str) -> None:
    try:
        run_config.validate(cfg)
    except run_config.ConfigError as err:
        raise SpecError(f"{path}.{err.path}" if err.path else path, err.reason) from None


@_memo
def _resolve(data: dict[str, Any], path: str, overrides: list[str] | None) -> run_config.RunConfig:
    preset = data.get("preset")
    if preset is not None and preset not in run_config.preset_names():
        raise SpecError(
            f"{path}.preset", f"unknown preset {preset!r}; known: {', '.join(run_config.preset_names())}"
        )
    try:
        return run_config.load_config(data=data, overrides=overrides)
    except run_config.ConfigError as err:
        raise SpecError(f"{path}.{err.path}" if err.path else path, err.reason) from None


def workers(spec: TrainingRunSpec, cfg: run_config.RunConfig) -> tuple[int, int]:
    """Elastic bounds: the spec's own fields win over the config's."""
    low = spec.min_workers if spec.min_workers is not None else cfg.parallel.min_workers
    high = spec.max_workers if spec.max_workers is not None else cfg.parallel.max_workers
    return low, high


@_memo
def validate_run(name: str, data: dict[str, Any]) -> tuple[TrainingRunSpec, run_config.RunConfig]:
    """Parse a TrainingRun spec and resolve its config with the elastic bounds applied."""
    check_name(name)
    spec = parse(TrainingRunSpec, data, "spec")
    cfg = resolve_config(spec.config, "spec.config")
    low, high = workers(spec, cfg)
    if low > high:
        where = "spec.minWorkers" if spec.min_workers is not None else "spec.config.parallel.min_workers"
        raise SpecError(where, f"({low}) must be <= maxWorkers ({high})")
    if (low, high) != (cfg.parallel.min_workers, cfg.parallel.max_workers):
        # The job's cross-field rules (batch size, EP divisibility) must hold at the new bounds too.
        cfg = dataclasses.replace(
            cfg, parallel=dataclasses.replace(cfg.parallel, min_workers=low, max_workers=high)
        )
        _check(cfg, "spec.config")
    return spec, cfg


@_memo
def validate_sweep(name: str, data: dict[str, Any]) -> ScalingSweepSpec:
    """Parse a ScalingSweep spec and check that every point it expands to is a valid run."""
    check_name(name)
    spec = parse(ScalingSweepSpec, data, "spec")
    resolve_config(spec.base, "spec.base")
    for field_name, values in (("models", spec.axes.models), ("dataFractions", spec.axes.data_fractions)):
        if len(set(values)) != len(values):
            raise SpecError(f"spec.axes.{field_name}", f"values must be unique; got {values}")
    for model, override in spec.overrides.items():
        if model not in spec.axes.models:
            raise SpecError(f"spec.overrides.{model}", f"is not one of spec.axes.models {spec.axes.models}")
        check_override_config(model, override)
    return spec
