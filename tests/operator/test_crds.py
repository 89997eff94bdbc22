"""The CRDs: in step with the code, structural, valid Kubernetes objects, and rejecting bad specs.

kmock does not enforce CRD schemas, so schema rejection is checked here by validating specs
against the generated schema with `jsonschema` (OpenAPI v3.0 -> JSON Schema draft 4, whose
boolean `exclusiveMinimum` matches), with unknown fields refused as `kubectl apply`'s strict
field validation refuses them.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from sphinxx.operator import crds

from .corpus import CORPUS, RUN_BASE, SWEEP_BASE

CHART_CRDS = Path(__file__).resolve().parents[2] / "helm" / "sphinxx" / "crds"
# Faults a schema cannot see: cross-field rules (CEL on a real server, our code here), names,
# and required fields a preset may supply.
NOT_SCHEMA = {
    "min-above-max",
    "missing-storage",
    "name-too-long",
    "override-min-above-max",
    "override-config-sets-axis",
    "sweep-name-too-long",
}


def _by_kind() -> dict[str, dict]:
    return {crd["spec"]["names"]["kind"]: crd for crd in crds.crds()}


def _schema(kind: str) -> dict:
    return _by_kind()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_chart_crds_match_the_code() -> None:
    for name, text in crds.rendered().items():
        assert (CHART_CRDS / name).read_text() == text, f"{name} drifted: run `sphinxx operator crds`"
    check = subprocess.run(
        [sys.executable, "-m", "sphinxx", "operator", "crds", "--check", str(CHART_CRDS)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


def test_crd_check_command_reports_drift(tmp_path: Path) -> None:
    crds.write(tmp_path)
    (tmp_path / "trainingruns.yaml").write_text("# edited\n")
    check = subprocess.run(
        [sys.executable, "-m", "sphinxx", "operator", "crds", "--check", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 1 and "trainingruns.yaml" in check.stderr


@pytest.mark.parametrize("kind", ["ScalingSweep", "TrainingRun"])
def test_crds_are_valid_kubernetes_objects(kind: str) -> None:
    crd = _by_kind()[kind]
    kubernetes_validate.validate(crd, "1.32", strict=True)
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"] == [{"ScalingSweep": "sweep", "TrainingRun": "trun"}[kind]]
    assert version["additionalPrinterColumns"][0]["jsonPath"] == ".status.phase"


def _walk(node, path="$"):
    yield path, node
    if isinstance(node, dict):
        for key, value in (node.get("properties") or {}).items():
            yield from _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            yield from _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", ["ScalingSweep", "TrainingRun"])
def test_schemas_are_structural(kind: str) -> None:
    for path, node in _walk(_schema(kind)):
        preserve = node.get("x-kubernetes-preserve-unknown-fields")
        assert "type" in node or preserve, f"{path}: every node needs a type"
        assert node.get("additionalProperties") is not False, (
            f"{path}: additionalProperties: false is not structural"
        )
        assert not ("properties" in node and "additionalProperties" in node), (
            f"{path}: both properties and additionalProperties"
        )
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path
        if ".config" in path or ".base" in path:
            assert "default" not in node, f"{path}: a default would override the preset"


def test_cel_rules_guard_worker_bounds() -> None:
    run_rules = _schema("TrainingRun")["properties"]["spec"]["x-kubernetes-validations"]
    assert any("self.minWorkers <= self.maxWorkers" in r["rule"] for r in run_rules)
    overrides = _schema("ScalingSweep")["properties"]["spec"]["properties"]["overrides"]
    assert "self[k].minWorkers <= self[k].maxWorkers" in overrides["x-kubernetes-validations"][0]["rule"]


def _as_json_schema(node):
    """OpenAPI v3.0 + strict field validation -> JSON Schema draft 4."""
    node = copy.deepcopy(node)
    if isinstance(node, dict):
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
            if "enum" in node:
                node["enum"] = [*node["enum"], None]
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for key in ("properties",):
            if key in node:
                node[key] = {k: _as_json_schema(v) for k, v in node[key].items()}
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                node[key] = _as_json_schema(node[key])
    return node


def _validator(kind: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(_as_json_schema(_schema(kind)["properties"]["spec"]))


@pytest.mark.parametrize(
    ("case", "kind", "name", "spec", "path"), [c for c in CORPUS if c[0] not in NOT_SCHEMA]
)
def test_schema_rejects_bad_specs(case, kind, name, spec, path) -> None:
    errors = list(_validator(kind).iter_errors(spec))
    assert errors, f"{case}: accepted by the CRD schema"


def test_schema_accepts_good_specs() -> None:
    assert not list(
        _validator("TrainingRun").iter_errors({"config": RUN_BASE, "maxWorkers": 2, "suspend": False})
    )
    sweep = {**SWEEP_BASE, "maxParallelRuns": 2, "overrides": {"debug": {"maxWorkers": 2}}}
    assert not list(_validator("ScalingSweep").iter_errors(sweep))
    # A size's config layer is partial (no storage.uri), and so may a base be when the operator
    # has a default prefix.
    layered = {
        **SWEEP_BASE,
        "base": {"preset": "debug", "storage": {"keep_last": 4}},
        "overrides": {
            "debug": {"config": {"model": {"llm_weights": "s3://w/debug"}, "storage": {"keep_best": 2}}}
        },
    }
    assert not list(_validator("ScalingSweep").iter_errors(layered))
    for preset in ("debug", "tinyllama-1.1b", "mixtral-8x7b"):
        text = (Path(__file__).resolve().parents[2] / "jobs" / "configs" / f"{preset}.yaml").read_text()
        config = {"preset": preset, **(yaml.safe_load(text) or {})}
        assert not list(_validator("TrainingRun").iter_errors({"config": config})), preset


def test_chart_ships_kopfs_peering_crds() -> None:
    """Helm installs crds/ before any template, so a KopfPeering can be created in the same install."""
    by_kind = {crd["spec"]["names"]["kind"]: crd for crd in crds.peering_crds()}
    assert {k: c["spec"]["scope"] for k, c in by_kind.items()} == {
        "ClusterKopfPeering": "Cluster",
        "KopfPeering": "Namespaced",
    }
    for kind, crd in by_kind.items():
        kubernetes_validate.validate(crd, "1.32", strict=True)
        assert crd["metadata"]["name"] == f"{kind.lower()}s.kopf.dev"
        (version,) = crd["spec"]["versions"]
        # kopf patches `status` on the object itself: a status subresource would drop its writes.
        assert version["name"] == "v1" and "subresources" not in version
        text = (CHART_CRDS / f"kopf-{kind.lower()}s.yaml").read_text()
        assert yaml.safe_load(text) == crd
