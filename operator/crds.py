"""The CustomResourceDefinitions, generated from the spec dataclasses and the run-config schema.

`sphinxx operator crds --output helm/sphinxx/crds` writes them; a test fails when the files in
the chart drift from this code. The schemas are *structural* (what Kubernetes accepts):

- the run-config JSON schema (`sphinxx.jobs.config.json_schema`) uses JSON-Schema forms that a
  CRD rejects: `additionalProperties: false` (unknown fields are pruned, and rejected by
  `kubectl apply`'s strict field validation instead), numeric `exclusiveMinimum` (a boolean
  next to `minimum` in OpenAPI v3.0), `additionalProperties: true` (use
  `x-kubernetes-preserve-unknown-fields`);
- defaults are dropped inside run configs: the API server would write them into every object,
  and a written default would then override the values of the `preset:` the user named;
- `required` is dropped from the config's sections: a preset, the base under a size's config
  layer, or the operator's defaults (`storage.uri` from the chart's bucket) may supply them.

`rendered()` also writes kopf's own peering CRDs (`KopfPeering`, `ClusterKopfPeering`), so that
Helm installs them from `crds/` before any object of their kind: a chart with several operator
replicas then installs in one step.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from sphinxx.jobs import config as run_config

from . import names
from .spec import Axes, ScalingSweepSpec, SizeOverride, TrainingRunSpec, camel

CONDITION_SCHEMA = {
    "type": "object",
    "required": ["type", "status"],
    "properties": {
        "type": {"type": "string"},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
        "observedGeneration": {"type": "integer"},
    },
}

RUN_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Model", "type": "string", "jsonPath": ".status.model"},
    {"name": "Data", "type": "number", "jsonPath": ".status.dataFraction"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.lastCheckpoint.step"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.metrics.loss"},
    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
SWEEP_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Done", "type": "string", "jsonPath": ".status.progress", "description": "succeeded/total"},
    {"name": "Running", "type": "integer", "jsonPath": ".status.counts.running"},
    {"name": "Failed", "type": "integer", "jsonPath": ".status.counts.failed"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
WORKER_RULE = {
    "rule": "!has(self.minWorkers) || !has(self.maxWorkers) || self.minWorkers <= self.maxWorkers",
    "message": "minWorkers must be <= maxWorkers",
    "fieldPath": ".minWorkers",
}
OVERRIDE_RULE = {
    "rule": "self.all(k, !has(self[k].minWorkers) || !has(self[k].maxWorkers) || "
    "self[k].minWorkers <= self[k].maxWorkers)",
    "message": "minWorkers must be <= maxWorkers in every override",
}


# ------------------------------------------------------------------------- schema generation


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """Turn the run config's JSON schema into a structural OpenAPI v3.0 schema (see module doc)."""
    out = copy.deepcopy(schema)
    out.pop("default", None)
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
    elif out.get("additionalProperties") is False:
        out.pop("additionalProperties")
    if isinstance(out.get("exclusiveMinimum"), (int, float)) and not isinstance(
        out["exclusiveMinimum"], bool
    ):
        out["minimum"] = out.pop("exclusiveMinimum")
        out["exclusiveMinimum"] = True
    if "properties" in out:
        out["properties"] = {k: structural(v) for k, v in out["properties"].items()}
    if "items" in out:
        out["items"] = structural(out["items"])
    return out


def config_schema(description: str, preset: bool = True) -> dict[str, Any]:
    """The run config, with its `preset:` key (a named base the fields are merged over)."""
    schema = structural(run_config.json_schema())
    if preset:
        schema["properties"] = {
            "preset": {
                "type": "string",
                "enum": run_config.preset_names(),
                "description": "named base config",
            },
            **schema["properties"],
        }
    # A preset, the sweep's base or the operator's defaults may provide them; the operator
    # validates the merged result.
    schema.pop("required", None)
    for section in schema["properties"].values():
        section.pop("required", None)
    schema["description"] = description
    return schema


def dataclass_schema(cls: type) -> dict[str, Any]:
    """OpenAPI schema of a spec dataclass, camelCase keys, constraints from field metadata."""
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        help_text = meta.pop("help", "")
        if f.name in ("config", "base") and cls in (TrainingRunSpec, ScalingSweepSpec, SizeOverride):
            # A size's layer chooses no preset: the axes and spec.base do (spec.AXIS_FIELDS).
            props[camel(f.name)] = config_schema(help_text, preset=cls is not SizeOverride)
            continue
        prop = _type_schema(hints[f.name], meta)
        if help_text:
            prop["description"] = help_text
        props[camel(f.name)] = prop
    return {"type": "object", "properties": props}


def _type_schema(tp: Any, meta: dict[str, Any]) -> dict[str, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        out = _type_schema(next(a for a in args if a is not type(None)), meta)
        out["nullable"] = True
        return out
    if dataclasses.is_dataclass(tp):
        return dataclass_schema(tp)
    if origin is list:
        item_meta = {k[len("items_") :]: v for k, v in meta.items() if k.startswith("items_")}
        out = {"type": "array", "items": _type_schema(args[0], item_meta)}
        if "minItems" in meta:
            out["minItems"] = meta["minItems"]
        return out
    if origin is dict:
        if args[1] is Any:
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {"type": "object", "additionalProperties": _type_schema(args[1], {})}
    if tp is Any:
        return {"x-kubernetes-preserve-unknown-fields": True}
    out: dict[str, Any] = {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[tp]}
    for key in ("minimum", "maximum"):
        if key in meta:
            out[key] = meta[key]
    if "exclusiveMinimum" in meta:
        out.update(minimum=meta["exclusiveMinimum"], exclusiveMinimum=True)
    if "enum" in meta:
        out["enum"] = list(meta["enum"])
    return out


def _status_schema(properties: dict[str, Any]) -> dict[str, Any]:
    # The operator owns status; keep unknown fields so an older CRD never prunes a newer operator's.
    return {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": properties}


RUN_STATUS = {
    "phase": {
        "type": "string",
        "enum": ["Pending", "Running", "Resuming", "Succeeded", "Failed", "Suspended"],
    },
    "attempt": {"type": "integer"},
    "retries": {"type": "integer", "description": "automatic retries used since the last manual resume"},
    "runId": {"type": "string", "description": "stable run id: Ray run name and checkpoint folder"},
    "model": {"type": "string"},
    "dataFraction": {"type": "number"},
    "rayJobName": {"type": "string"},
    "rayClusterName": {"type": "string"},
    "mlflowRunId": {"type": "string"},
    "configUri": {"type": "string"},
    "storageUri": {
        "type": "string",
        "description": "checkpoint prefix, pinned at the first attempt (it may be the operator's default)",
    },
    "lastCheckpoint": {
        "type": "object",
        "properties": {"step": {"type": "integer"}, "uri": {"type": "string"}},
    },
    "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
    "workers": {"type": "object", "additionalProperties": {"type": "integer"}},
    "conditions": {"type": "array", "items": CONDITION_SCHEMA},
    "observedGeneration": {"type": "integer"},
    "message": {"type": "string"},
}
NUMBER = {"type": "number"}
SCALING_LAW_STATUS = {
    "type": "object",
    "description": "the scaling law fitted when the sweep succeeded (operator/scaling_law.py)",
    "properties": {
        "form": {"type": "string", "enum": ["chinchilla", "per-axis"]},
        "summary": {"type": "string"},
        "numPoints": {"type": "integer"},
        "paramsAxis": {"type": "string", "description": "what N is (the model's nominal parameter count)"},
        "dataAxis": {"type": "string", "description": "what D is (the point's data fraction)"},
        "coefficients": {
            "type": "object",
            "description": "chinchilla form: L(N, D) = E + A / N^alpha + B / D^beta",
            "properties": {key: NUMBER for key in ("E", "A", "alpha", "B", "beta")},
        },
        "residualRms": {"type": "number", "description": "RMS of the fit's log-space residuals"},
        "perAxis": {
            "type": "array",
            "description": "per-axis form: L = coefficient * x^-slope on each axis",
            "items": {
                "type": "object",
                "properties": {
                    "axis": {"type": "string", "enum": ["params", "data"]},
                    "coefficient": NUMBER,
                    "slope": NUMBER,
                    "numPoints": {"type": "integer"},
                },
            },
        },
        "note": {"type": "string"},
        "error": {"type": "string", "description": "why no law could be fitted"},
    },
}
SWEEP_STATUS = {
    "phase": {"type": "string", "enum": ["Pending", "Running", "Succeeded", "Failed", "Suspended"]},
    "progress": {"type": "string"},
    "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
    "points": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    "mlflowRunId": {"type": "string"},
    "mlflowRunStatus": {
        "type": "string",
        "enum": ["RUNNING", "FINISHED", "FAILED"],
        "description": "what the operator last set the parent MLflow run to (it ends with the sweep)",
    },
    "scalingLaw": SCALING_LAW_STATUS,
    "conditions": {"type": "array", "items": CONDITION_SCHEMA},
    "observedGeneration": {"type": "integer"},
    "message": {"type": "string"},
}


def _crd(kind: str, plural: str, short: str, spec_cls: type, status: dict, columns: list) -> dict[str, Any]:
    spec_schema = dataclass_schema(spec_cls)
    if spec_cls is TrainingRunSpec:
        spec_schema["x-kubernetes-validations"] = [WORKER_RULE]
    else:
        spec_schema["required"] = ["axes"]
        spec_schema["properties"]["overrides"]["x-kubernetes-validations"] = [OVERRIDE_RULE]
        spec_schema["properties"]["axes"]["required"] = [camel(f.name) for f in dataclasses.fields(Axes)]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{names.GROUP}"},
        "spec": {
            "group": names.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["sphinxx"],
            },
            "versions": [
                {
                    "name": names.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": _status_schema(status),
                            },
                        }
                    },
                }
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    return [
        _crd("ScalingSweep", "scalingsweeps", "sweep", ScalingSweepSpec, SWEEP_STATUS, SWEEP_COLUMNS),
        _crd("TrainingRun", "trainingruns", "trun", TrainingRunSpec, RUN_STATUS, RUN_COLUMNS),
    ]


def peering_crds() -> list[dict[str, Any]]:
    """kopf's peering resources (`--peering`): the status map in which operator replicas announce
    themselves. Cluster-wide operators use ClusterKopfPeering, namespaced ones a KopfPeering per
    namespace; both are installed, as kopf's own peering.yaml does. No status subresource: kopf
    writes `status` with a plain patch of the object, which a status subresource would drop."""
    out = []
    for kind, scope in (("ClusterKopfPeering", "Cluster"), ("KopfPeering", "Namespaced")):
        plural = f"{kind.lower()}s"
        out.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.kopf.dev"},
                "spec": {
                    "group": "kopf.dev",
                    "scope": scope,
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "properties": {
                                        "status": {
                                            "type": "object",
                                            "description": "peer id -> {priority, lifetime, lastseen}, "
                                            "written by the operators",
                                            "x-kubernetes-preserve-unknown-fields": True,
                                        }
                                    },
                                }
                            },
                        }
                    ],
                },
            }
        )
    return out


HEADER = "# Generated by `sphinxx operator crds` from sphinxx.operator.crds: do not edit by hand.\n"
PEERING_HEADER = (
    "# kopf's peering CRD (sphinxx operator run --peering), installed by Helm from crds/ before any\n"
    "# KopfPeering object. Another kopf operator may have installed it already: Helm then skips it.\n"
)


def rendered() -> dict[str, str]:
    """File name -> YAML text, as written into the chart."""
    out = {
        f"{crd['spec']['names']['plural']}.yaml": HEADER + yaml.safe_dump(crd, sort_keys=False, width=110)
        for crd in crds()
    }
    for crd in peering_crds():
        out[f"kopf-{crd['spec']['names']['plural']}.yaml"] = (
            HEADER + PEERING_HEADER + yaml.safe_dump(crd, sort_keys=False, width=110)
        )
    return out


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, text in rendered().items():
        (directory / filename).write_text(text)
        paths.append(directory / filename)
    return paths
