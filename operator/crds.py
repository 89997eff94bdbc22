"""The CustomResourceDefinitions, generated from the schema's spec dataclasses and the run config.

`sphinxx operator crds --output helm/sphinxx/crds` writes them; a test fails when the files in
the chart drift from this code. The schemas come from the one field model
(`sphinxx.schema.openapi`, `Dialect.CRD`), so they are *structural* (what Kubernetes
accepts) and say what the operator's admission says wherever a CRD can say it:

- unknown fields are pruned by the API server, and refused by `kubectl apply`'s strict field
  validation;
- a run-config layer (`spec.config`, `spec.base`, a size's `config`) has the run config's own
  fields and constraints, without `required` (a preset, the sweep's base or the operator's
  defaults may supply them) and without defaults (a written default would override the preset);
- cross-field rules a CRD can express are CEL rules (`x-kubernetes-validations`); the rest
  (resolving every point's config) only the operator's admission can check.

`rendered()` also writes kopf's own peering CRDs (`KopfPeering`, `ClusterKopfPeering`), so that
Helm installs them from `crds/` before any object of their kind: a chart with several operator
replicas then installs in one step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sphinxx.schema.fields import Naming
from sphinxx.schema.openapi import Dialect, schema_of
from sphinxx.schema.resources import (
    LAYER,
    LAYER_WITH_PRESET,
    RESOURCES_LAYER,
    Resources,
    ScalingSweepSpec,
    TrainingRunSpec,
)
from sphinxx.schema.run import RunConfig, preset_names
from sphinxx.schema.status import RunStatus, SweepStatus

from . import names

RUN_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Model", "type": "string", "jsonPath": ".status.model"},
    {"name": "Data", "type": "number", "jsonPath": ".status.dataFraction"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step", "description": "live step"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {"name": "Tok/s", "type": "number", "jsonPath": ".status.progress.tokensPerSecond"},
    {"name": "MFU", "type": "number", "jsonPath": ".status.progress.mfu"},
    {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta"},
    {
        "name": "Ckpt",
        "type": "integer",
        "jsonPath": ".status.lastCheckpoint.step",
        "description": "committed",
    },
    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    # `kubectl get trun -o wide`: planned restarts, which lose no step and use no retry.
    {"name": "Preempted", "type": "integer", "jsonPath": ".status.preemptions", "priority": 1},
    {"name": "Resized", "type": "integer", "jsonPath": ".status.resizes", "priority": 1},
]
SWEEP_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Done", "type": "string", "jsonPath": ".status.progress", "description": "succeeded/total"},
    {
        "name": "Queued",
        "type": "integer",
        "jsonPath": ".status.counts.queued",
        "description": "waiting for a slot",
    },
    {"name": "Running", "type": "integer", "jsonPath": ".status.counts.running"},
    {"name": "Failed", "type": "integer", "jsonPath": ".status.counts.failed"},
    {"name": "ETA", "type": "string", "jsonPath": ".status.eta", "description": "every point done"},
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


def config_layer_schema(description: str, preset: bool = True) -> dict[str, Any]:
    """A run-config layer: the run config's fields, nothing required, plus `preset:` where allowed."""
    schema = schema_of(RunConfig, Dialect.CRD, required=False)
    if preset:
        named = {"type": "string", "enum": preset_names(), "description": "named base config"}
        schema["properties"] = {"preset": named, **schema["properties"]}
    schema["description"] = description
    return schema


def spec_schema(cls: type) -> dict[str, Any]:
    resources = schema_of(Resources, Dialect.CRD, Naming.CAMEL, required=False)
    resources["description"] = "pod settings (fields of spec.resources)"
    embed = {
        LAYER_WITH_PRESET: config_layer_schema("run config layer", preset=True),
        LAYER: config_layer_schema("run config layer", preset=False),
        RESOURCES_LAYER: resources,
    }
    return schema_of(cls, Dialect.CRD, Naming.CAMEL, embed=embed)


def status_schema(cls: type) -> dict[str, Any]:
    """The status of a resource, from the vocabulary's typed status (`sphinxx.schema.status`).

    The operator owns status; unknown fields are kept so an older CRD never prunes a newer operator's.
    """
    schema = schema_of(cls, Dialect.CRD, Naming.CAMEL, required=False)
    schema["x-kubernetes-preserve-unknown-fields"] = True
    return schema


def _crd(
    kind: str, plural: str, short: str, spec_cls: type, status_cls: type, columns: list
) -> dict[str, Any]:
    spec = spec_schema(spec_cls)
    if spec_cls is TrainingRunSpec:
        spec["x-kubernetes-validations"] = [WORKER_RULE]
    else:
        spec["properties"]["overrides"]["x-kubernetes-validations"] = [OVERRIDE_RULE]
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
                                "spec": spec,
                                "status": status_schema(status_cls),
                            },
                        }
                    },
                }
            ],
        },
    }


def crds() -> list[dict[str, Any]]:
    return [
        _crd("ScalingSweep", "scalingsweeps", "sweep", ScalingSweepSpec, SweepStatus, SWEEP_COLUMNS),
        _crd("TrainingRun", "trainingruns", "trun", TrainingRunSpec, RunStatus, RUN_COLUMNS),
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
