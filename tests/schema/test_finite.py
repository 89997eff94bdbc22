"""NaN and ±inf are refused in every float field, found by walking the schema (not listed by hand).

A NaN passes every comparison (`nan < 0` and `nan > 10` are both False) and inf every one-sided
bound, so bounds alone let them through; `fields.check` refuses any non-finite float, wherever
the field is declared. Each float field of the run config (nested sections, list items, list
entries of sections) and of the TrainingRun spec gets NaN, inf and -inf in turn.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Iterator
from typing import Any

import pytest

from sphinxx.schema.admission import admit_run
from sphinxx.schema.fields import Naming, SchemaError, hints, unwrap_optional
from sphinxx.schema.resources import TrainingRunSpec
from sphinxx.schema.run import RunConfig, load_config

from .corpus import RUN_BASE

BAD = [float("nan"), float("inf"), float("-inf")]


def float_paths(
    cls: type, naming: Naming = Naming.SNAKE, prefix: tuple[Any, ...] = ()
) -> Iterator[tuple[Any, ...]]:
    """Key paths of every float the dataclass `cls` declares; list items as index 0."""
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp, _ = unwrap_optional(hints(cls)[f.name])
        here = (*prefix, naming.key(f.name))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if tp is float:
            yield here
        elif dataclasses.is_dataclass(tp):
            yield from float_paths(tp, naming, here)  # type: ignore[arg-type]
        elif origin is list and args[0] is float:
            yield (*here, 0)
        elif origin is list and dataclasses.is_dataclass(args[0]):
            yield from float_paths(args[0], naming, (*here, 0))


def with_value(base: dict[str, Any], path: tuple[Any, ...], value: float) -> dict[str, Any]:
    """A deep copy of `base` with `value` at `path`, creating sections (and list items from the
    base's own first item) on the way."""
    out = copy.deepcopy(base)
    node: Any = out
    for key, nxt in zip(path, path[1:], strict=False):
        if isinstance(key, int):
            node = node[key]
            continue
        if key not in node or node[key] is None:
            node[key] = [0.5, 0.5] if isinstance(nxt, int) else {}
        node = node[key]
    node[path[-1]] = value
    return out


def dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else key)
    return out


RUN_FLOATS = list(float_paths(RunConfig))
SPEC_FLOATS = [p for p in float_paths(TrainingRunSpec, Naming.CAMEL) if p[0] != "config"]


def test_the_walk_finds_the_float_fields() -> None:
    found = {dotted(p) for p in RUN_FLOATS}
    assert {"train.lr", "train.betas[0]", "data.sources[0].weight", "model.overrides.rope_theta"} <= found
    assert len(RUN_FLOATS) >= 12, found
    assert {dotted(p) for p in SPEC_FLOATS} >= {"failurePolicy.backoffSeconds"}


@pytest.mark.parametrize("value", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("path", RUN_FLOATS, ids=[dotted(p) for p in RUN_FLOATS])
def test_every_float_of_the_run_config_refuses_non_finite(path: tuple[Any, ...], value: float) -> None:
    data = with_value({k: v for k, v in RUN_BASE.items() if k != "preset"}, path, value)
    with pytest.raises(SchemaError) as err:
        load_config(preset="debug", data=data)
    assert err.value.path == dotted(path), str(err.value)
    assert err.value.reason.startswith("must be a finite number"), str(err.value)
    with pytest.raises(SchemaError) as admitted:
        admit_run("nonfinite", {"config": {**data, "preset": "debug"}})
    assert admitted.value.path == f"spec.config.{dotted(path)}", str(admitted.value)


@pytest.mark.parametrize("value", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("path", SPEC_FLOATS, ids=[dotted(p) for p in SPEC_FLOATS])
def test_every_float_of_the_training_run_spec_refuses_non_finite(path: tuple[Any, ...], value: float) -> None:
    spec = with_value({"config": copy.deepcopy(RUN_BASE)}, path, value)
    with pytest.raises(SchemaError) as err:
        admit_run("nonfinite", spec)
    assert err.value.path == f"spec.{dotted(path)}", str(err.value)


def test_a_dotlist_override_of_nan_is_refused() -> None:
    with pytest.raises(SchemaError, match=r"^train\.lr: must be a finite number"):
        load_config(preset="debug", data={"storage": RUN_BASE["storage"]}, overrides=["train.lr=nan"])
