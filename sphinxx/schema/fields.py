"""The field model: how every typed spec of the project declares, parses and checks its fields.

One mechanism for the run config, the custom-resource specs and their status: a field is a
dataclass field whose metadata carries a one-line help text and its constraints
(`field(default, "help", minimum=1, maximum=4096)`). From that one declaration come

- parsing and validation of plain data (`parse`): unknown keys, wrong types, missing required
  fields and every constraint are refused with a `SchemaError` naming the field path
  (`spec.axes.models[1]: must be one of ...`);
- the JSON / OpenAPI schemas (`openapi.py`) that `sphinxx config schema` prints and the CRDs
  embed, so `kubectl apply` and the operator cannot disagree about a constraint.

Python field names are snake_case. A Kubernetes object spells them in camelCase
(`Naming.CAMEL`); the run config keeps snake_case everywhere (`Naming.SNAKE`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING
from typing import Any, TypeVar

from . import uris

T = TypeVar("T")

# The bounds every count gets unless it says otherwise: large enough for any real run, small
# enough that a typo (an extra digit, a pasted timestamp) is refused at admission.
MAX_COUNT = 1_000_000
CONSTRAINT_KEYS = (
    "enum",
    "minimum",
    "maximum",
    "exclusive_minimum",
    "min_length",
    "max_length",
    "pattern",
    "min_items",
    "max_items",
    "unique_items",
    "uri",  # a URI of kind uris.STORAGE or uris.TRACKING: one rule (uris.py), in the CRD a pattern
    "items",  # constraints of each item of a list / value of a map (a dict of these same keys)
)


class SchemaError(ValueError):
    """A value that breaks the schema; `path` is the dotted field path at fault."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path else reason)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.path, self.reason)  # pickled across processes (Ray, the operator)

    def under(self, prefix: str) -> SchemaError:
        """The same error with its path moved under `prefix` (`train.lr` -> `spec.config.train.lr`)."""
        if not prefix:
            return self
        return SchemaError(join(prefix, self.path) if self.path else prefix, self.reason)


class Naming(enum.Enum):
    SNAKE = "snake"
    CAMEL = "camel"

    def key(self, name: str) -> str:
        if self is Naming.SNAKE:
            return name
        head, *rest = name.split("_")
        return head + "".join(part.title() for part in rest)


def join(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


def field(default: Any = MISSING, help: str = "", **constraints: Any) -> Any:
    """A dataclass field carrying its help text and constraints (keys: CONSTRAINT_KEYS)."""
    unknown = set(constraints) - set(CONSTRAINT_KEYS)
    assert not unknown, f"unknown constraint(s) {sorted(unknown)}"
    meta = {"help": help, "constraints": constraints}
    if isinstance(default, (list, dict)):
        frozen = default
        return dataclasses.field(default_factory=lambda: _copy(frozen), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def nested(factory: Callable[[], Any], help: str = "") -> Any:
    """A dataclass-typed field with a default instance."""
    return dataclasses.field(default_factory=factory, metadata={"help": help, "constraints": {}})


def count(default: Any, help: str, minimum: int = 0, maximum: int = MAX_COUNT) -> Any:
    """An integer count: bounded on both sides (`maximum` guards against typos)."""
    return field(default, help, minimum=minimum, maximum=maximum)


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def help_of(f: dataclasses.Field) -> str:
    return str(f.metadata.get("help", ""))


def constraints_of(f: dataclasses.Field) -> dict[str, Any]:
    return dict(f.metadata.get("constraints", {}))


def is_required(f: dataclasses.Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


_HINTS: dict[type, dict[str, Any]] = {}


def hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config class (cached: classes do not change at run time)."""
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = typing.get_type_hints(cls)
    return found


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, nullable) of `X | None`."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        assert len(args) == 1, f"only X | None unions are supported, got {tp}"
        return args[0], True
    return tp, False


# ------------------------------------------------------------------------------ checking


def check(value: Any, constraints: Mapping[str, Any], path: str) -> None:
    """Every declared constraint of one value; the first one broken raises SchemaError.

    Whatever the constraints, a float must be finite: NaN passes every comparison and ±inf every
    one-sided bound, and a run with either trains to NaN after its GPUs are allocated. Every field
    (and every item of a list or map field) is checked here, so a new float field gets the rule.
    """
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise SchemaError(path, f"must be a finite number; got {value!r}")
    if "enum" in constraints:
        allowed = [e.value if isinstance(e, enum.Enum) else e for e in constraints["enum"]]
        plain = value.value if isinstance(value, enum.Enum) else value
        if plain not in allowed:
            raise SchemaError(path, f"must be one of {', '.join(map(str, allowed))}; got {plain!r}")
    if "minimum" in constraints and value < constraints["minimum"]:
        raise SchemaError(path, f"must be >= {constraints['minimum']}; got {value!r}")
    if "maximum" in constraints and value > constraints["maximum"]:
        raise SchemaError(path, f"must be <= {constraints['maximum']}; got {value!r}")
    if "exclusive_minimum" in constraints and value <= constraints["exclusive_minimum"]:
        raise SchemaError(path, f"must be > {constraints['exclusive_minimum']}; got {value!r}")
    if "min_length" in constraints and len(value) < constraints["min_length"]:
        least = constraints["min_length"]
        raise SchemaError(path, "must not be empty" if least == 1 else f"must be at least {least} characters")
    if "max_length" in constraints and len(value) > constraints["max_length"]:
        raise SchemaError(path, f"must be at most {constraints['max_length']} characters; got {len(value)}")
    if "pattern" in constraints and not re.fullmatch(constraints["pattern"], value):
        raise SchemaError(path, f"must match {constraints['pattern']}; got {value!r}")
    if "uri" in constraints and (fault := uris.problem(value, constraints["uri"])):
        raise SchemaError(path, f"{fault}; got {value!r}")
    if "min_items" in constraints and len(value) < constraints["min_items"]:
        raise SchemaError(path, f"must have at least {constraints['min_items']} item(s); got {len(value)}")
    if "max_items" in constraints and len(value) > constraints["max_items"]:
        raise SchemaError(path, f"must have at most {constraints['max_items']} item(s); got {len(value)}")
    if constraints.get("unique_items"):
        seen = [json_key(v) for v in value]
        if len(set(seen)) != len(seen):
            raise SchemaError(path, f"values must be unique; got {list(value)}")


def json_key(value: Any) -> str:
    return repr(value.value if isinstance(value, enum.Enum) else value)


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _scalar(tp: Any, value: Any, path: str) -> Any:
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(str(e.value) for e in tp)
            raise SchemaError(path, f"must be one of {allowed}; got {value!r}") from None
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),  # finite: `check`
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"unsupported field type {tp!r} at {path}")
    if not ok:
        raise SchemaError(path, f"must be {_TYPE_NAMES[tp]}, got {value!r}")
    return float(value) if tp is float else value


# ------------------------------------------------------------------------------- parsing


def parse(cls: type[T], data: Any, path: str = "", naming: Naming = Naming.SNAKE) -> T:
    """A `cls` instance from plain data (JSON/YAML); anything off raises SchemaError with its path."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SchemaError(path, f"must be an object, got {type(data).__name__}")
    fields = {naming.key(f.name): f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            raise SchemaError(
                join(path, str(key)),
                f"unknown field; known fields: {', '.join(sorted(fields))}",
            )
    types_ = hints(cls)
    values: dict[str, Any] = {}
    for key, f in fields.items():
        where = join(path, key)
        if key not in data:
            if is_required(f):
                raise SchemaError(where, "is required but not set")
            continue
        values[f.name] = parse_value(types_[f.name], data[key], where, constraints_of(f), naming)
    return cls(**values)


def parse_value(
    tp: Any, value: Any, path: str, constraints: Mapping[str, Any], naming: Naming = Naming.SNAKE
) -> Any:
    tp, nullable = unwrap_optional(tp)
    if value is None:
        if nullable or tp is Any:
            return None
        raise SchemaError(path, "must not be null")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    item_constraints = constraints.get("items", {})
    out: Any
    if dataclasses.is_dataclass(tp):
        out = parse(tp, value, path, naming)  # type: ignore[arg-type]
    elif origin is list:
        if not isinstance(value, list):
            raise SchemaError(path, f"must be a list, got {type(value).__name__}")
        out = [parse_value(args[0], v, join(path, i), item_constraints, naming) for i, v in enumerate(value)]
    elif origin is dict:
        if not isinstance(value, Mapping):
            raise SchemaError(path, f"must be an object, got {type(value).__name__}")
        for key in value:
            if not isinstance(key, str):
                raise SchemaError(path, f"keys must be strings; got {key!r}")
        out = {k: parse_value(args[1], v, join(path, k), item_constraints, naming) for k, v in value.items()}
    else:
        out = _scalar(tp, value, path)
    check(out, constraints, path)
    return out


def validate(obj: Any, path: str = "") -> None:
    """Check an already-built dataclass instance (e.g. from omegaconf) field by field."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = join(path, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, where)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    validate(item, join(where, i))
                else:
                    check(item, constraints_of(f).get("items", {}), join(where, i))
        elif isinstance(value, dict):
            for key, item in value.items():
                check(item, constraints_of(f).get("items", {}), join(where, key))
        check(value, constraints_of(f), where)


def dump(obj: Any, naming: Naming = Naming.SNAKE, drop_none: bool = False) -> Any:
    """Plain data (JSON-able) of a dataclass tree; enums become their values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = dump(getattr(obj, f.name), naming, drop_none)
            if drop_none and value is None:
                continue
            out[naming.key(f.name)] = value
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: dump(v, naming, drop_none) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [dump(v, naming, drop_none) for v in obj]
    return obj


# -------------------------------------------------------------------------- dict helpers


def deep_merge(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """`layer` over `base`: objects merge key by key; anything else (lists too) is replaced."""
    out = _copy(dict(base))
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = _copy(value)
    return out


def has_path(data: Any, dotted: str) -> bool:
    """Whether plain data sets the field at `dotted` (`model.llm_weights`)."""
    node = data
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True
