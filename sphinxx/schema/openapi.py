"""JSON Schema and Kubernetes (structural OpenAPI v3.0) schemas, generated from the field model.

One generator, two dialects, both read from the same field declarations (`fields.py`):

- `Dialect.JSON`: JSON Schema (draft 2020-12) of a run config, printed by
  `sphinxx config schema` for editors and linters: unknown keys refused
  (`additionalProperties: false`), defaults shown, `null` allowed where a field is optional.
- `Dialect.CRD`: what a CustomResourceDefinition accepts. A structural schema may not say
  `additionalProperties: false` (the API server prunes unknown fields, and `kubectl apply`'s
  strict field validation refuses them), writes `exclusiveMinimum` as a boolean next to
  `minimum`, spells a set of scalars `x-kubernetes-list-type: set` (no `uniqueItems`), marks
  free-form objects `x-kubernetes-preserve-unknown-fields`, and carries no defaults (the API
  server would write them into every object, and a written default would then override what a
  `preset:` says).

`embed` replaces the schema of fields whose metadata names a `layer` (the run config embedded in
a TrainingRun or ScalingSweep spec), so a CRD shows the run config's own fields.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Mapping
from typing import Any

from . import uris
from .fields import Naming, constraints_of, help_of, hints, is_required, unwrap_optional

TYPE_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}


class Dialect(enum.Enum):
    JSON = "json"
    CRD = "crd"


def schema_of(
    cls: type,
    dialect: Dialect,
    naming: Naming = Naming.SNAKE,
    *,
    required: bool = True,
    embed: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Schema of dataclass `cls`. `required=False` leaves out `required` lists (partial layers)."""
    return _Generator(dialect, naming, required, dict(embed or {})).object(cls)


@dataclasses.dataclass
class _Generator:
    dialect: Dialect
    naming: Naming
    required: bool
    embed: dict[str, dict[str, Any]]

    @property
    def crd(self) -> bool:
        return self.dialect is Dialect.CRD

    def object(self, cls: type) -> dict[str, Any]:
        types_ = hints(cls)
        props: dict[str, Any] = {}
        required: list[str] = []
        for f in dataclasses.fields(cls):
            key = self.naming.key(f.name)
            layer = f.metadata.get("layer")
            if layer is not None:
                prop = dict(self.embed[layer])
            else:
                prop = self.value(types_[f.name], constraints_of(f))
                if not self.crd and not is_required(f):
                    default = _default(f)
                    if default is not None:
                        prop["default"] = default
            if help_of(f):
                prop["description"] = help_of(f)
            props[key] = prop
            if is_required(f):
                required.append(key)
        out: dict[str, Any] = {"type": "object", "properties": props}
        if not self.crd:
            out["additionalProperties"] = False
        if required and self.required:
            out["required"] = required
        return out

    def value(self, tp: Any, constraints: Mapping[str, Any]) -> dict[str, Any]:
        tp, nullable = unwrap_optional(tp)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        items = constraints.get("items", {})
        if dataclasses.is_dataclass(tp):
            out = self.object(tp)  # type: ignore[arg-type]
        elif origin is list:
            out = {"type": "array", "items": self.value(args[0], items)}
        elif origin is dict:
            if args[1] is Any:
                out = self._free_object()
            else:
                out = {"type": "object", "additionalProperties": self.value(args[1], items)}
        elif tp is Any:
            out = {"x-kubernetes-preserve-unknown-fields": True} if self.crd else {}
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            out = {"type": "string", "enum": [e.value for e in tp]}
        else:
            out = {"type": TYPE_NAMES[tp]}
        out.update(self.constraints(constraints))
        if nullable:
            if self.crd:
                out["nullable"] = True
            elif "type" in out:
                out["type"] = [out["type"], "null"]
                if "enum" in out:
                    out["enum"] = [*out["enum"], None]
        return out

    def _free_object(self) -> dict[str, Any]:
        if self.crd:
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {"type": "object", "additionalProperties": True}

    def constraints(self, c: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "enum" in c:
            out["enum"] = [e.value if isinstance(e, enum.Enum) else e for e in c["enum"]]
        for ours, theirs in (
            ("minimum", "minimum"),
            ("maximum", "maximum"),
            ("min_length", "minLength"),
            ("max_length", "maxLength"),
            ("min_items", "minItems"),
            ("max_items", "maxItems"),
        ):
            if ours in c:
                out[theirs] = c[ours]
        if "exclusive_minimum" in c:
            if self.crd:
                out.update(minimum=c["exclusive_minimum"], exclusiveMinimum=True)
            else:
                out["exclusiveMinimum"] = c["exclusive_minimum"]
        if "pattern" in c:
            out["pattern"] = f"^(?:{c['pattern']})$"  # ours is a full match; JSON Schema's a search
        if "uri" in c:
            assert "pattern" not in c, "a URI field's pattern is its URI rule (uris.pattern)"
            out["pattern"] = f"^(?:{uris.pattern(c['uri'])})$"
        if c.get("unique_items"):
            if self.crd:
                out["x-kubernetes-list-type"] = "set"
            else:
                out["uniqueItems"] = True
        return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    if dataclasses.is_dataclass(value):
        return None  # nested objects show their own fields' defaults
    if isinstance(value, enum.Enum):
        return value.value
    return value
