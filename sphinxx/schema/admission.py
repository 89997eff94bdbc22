"""Admission of a TrainingRun: everything the job would refuse at start is refused here, first.

`admit_run(name, spec)` is what the operator runs before it creates anything for a run, and what
`sphinxx.sweep.points.admit_sweep` runs for every point of a sweep:

1. the object name (it becomes label values and the run id);
2. no credentials anywhere in the spec (`credentials.py`);
3. the spec's own fields (`resources.TrainingRunSpec`, field paths in camelCase), the pod
   settings' cross-value rules included (`pods.check_pods`);
4. the run config fully resolved (preset <- layer) and checked by the same code the job runs at
   start (`run.load_config`, `run.check_runnable`), at the elastic bounds the spec asks for.

Errors are `SchemaError`s whose path starts at the object (`spec.config.train.lr: ...`).

Resolving a config through omegaconf costs tens of milliseconds, and the operator re-admits
objects on every timer tick, so results (and errors) are cached by the JSON of the input. A
sweep's points differ only in flavor and data fraction; the fraction is applied after a cached
resolution of the rest (`resolve_layer`), so a 1,000-point sweep resolves one config per size.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .credentials import refuse_credentials
from .fields import Naming, SchemaError, parse
from .pods import check_pods
from .resources import TrainingRunSpec
from .run import NAME_PATTERN, RunConfig, check, check_runnable, load_config

MAX_NAME = 63  # object names are copied into label values
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class AdmittedRun:
    """A TrainingRun that may start: its parsed spec and its resolved run config. Read-only."""

    spec: TrainingRunSpec
    config: RunConfig

    @property
    def bounds(self) -> tuple[int, int]:
        """Elastic worker bounds (the spec's fields win over the config's)."""
        return self.config.parallel.min_workers, self.config.parallel.max_workers


def memo(fn: F) -> F:
    """Cache a pure admission by the JSON of its arguments, errors included."""

    @functools.lru_cache(maxsize=16384)
    def cached(key: str) -> tuple[Any, SchemaError | None]:
        try:
            return fn(*json.loads(key)), None
        except SchemaError as err:
            return None, err

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        result, error = cached(json.dumps(args, sort_keys=True, default=str))
        if error is not None:
            raise SchemaError(error.path, error.reason)
        return result

    return wrapper  # type: ignore[return-value]


def check_name(name: str, path: str = "metadata.name") -> None:
    if len(name) > MAX_NAME:
        raise SchemaError(
            path, f"must be at most {MAX_NAME} characters (it becomes a label value); got {len(name)}"
        )
    if not re.fullmatch(NAME_PATTERN, name):
        raise SchemaError(path, f"must be lower-case letters, digits, '-' or '.'; got {name!r}")


def resolve_layer(layer: Any, path: str) -> RunConfig:
    """A run-config layer (`preset:` + fields) resolved and checked; errors under `path`."""
    if not isinstance(layer, dict):
        raise SchemaError(path, f"must be an object, got {type(layer).__name__}")
    section = layer.get("data")
    fraction = section.get("fraction") if isinstance(section, dict) else None
    if not isinstance(section, dict) or not isinstance(fraction, (int, float)) or isinstance(fraction, bool):
        return _resolve(layer, path)
    rest = {**layer, "data": {k: v for k, v in section.items() if k != "fraction"}}
    cfg = _resolve(rest, path)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fraction=float(fraction)))
    return _checked(cfg, path)


@memo
def _resolve(layer: dict[str, Any], path: str) -> RunConfig:
    try:
        return load_config(data=layer)
    except SchemaError as err:
        raise err.under(path) from None


def _checked(cfg: RunConfig, path: str) -> RunConfig:
    try:
        return check(cfg)
    except SchemaError as err:
        raise err.under(path) from None


@memo
def admit_run(name: str, spec: Any, runnable: bool = True) -> AdmittedRun:
    """A TrainingRun's spec admitted (see the module docstring); `runnable=False` skips step 4's
    data and tokenizer requirement (for a spec that only describes, e.g. `sphinxx config`)."""
    check_name(name)
    refuse_credentials(spec, "spec")
    parsed = parse(TrainingRunSpec, spec, "spec", Naming.CAMEL)
    check_pods(parsed.resources, "spec.resources")
    layer = parsed.config
    bounds = {
        k: v for k, v in (("min_workers", parsed.min_workers), ("max_workers", parsed.max_workers)) if v
    }
    if bounds and isinstance(layer, dict):
        # The spec's bounds win over the config's: resolve at them, so the job's cross-field rules
        # (batch size, EP divisibility) are checked where the run will actually be.
        parallel = layer.get("parallel")
        layer = {**layer, "parallel": {**(parallel if isinstance(parallel, dict) else {}), **bounds}}
    try:
        cfg = resolve_layer(layer, "spec.config")
    except SchemaError as err:
        raise _bound_error(err, parsed) from None
    if runnable:
        try:
            check_runnable(cfg)
        except SchemaError as err:
            raise err.under("spec.config") from None
    return AdmittedRun(parsed, cfg)


def _bound_error(err: SchemaError, spec: TrainingRunSpec) -> SchemaError:
    """A worker-bound error is named at the spec field that set the bound."""
    for key, value in (("min_workers", spec.min_workers), ("max_workers", spec.max_workers)):
        if value is not None and err.path == f"spec.config.parallel.{key}":
            field_name = Naming.CAMEL.key(key)
            reason = err.reason.replace("parallel.max_workers", "maxWorkers").replace(
                "parallel.min_workers", "minWorkers"
            )
            return SchemaError(f"spec.{field_name}", reason)
    return err
