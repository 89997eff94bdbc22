"""The CRDs: in step with the code, structural, valid Kubernetes objects, and agreeing with admission.

kmock does not enforce CRD schemas, so what a real API server would do is checked here: the
generated schema validated with `jsonschema` (OpenAPI v3.0 -> JSON Schema draft 4, whose boolean
`exclusiveMinimum` matches; `x-kubernetes-list-type: set` -> `uniqueItems`), unknown fields
refused as `kubectl apply`'s strict field validation refuses them, and every
`x-kubernetes-validations` CEL rule evaluated with cel-python (a CEL implementation of its own).
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
from tests.schema.corpus import BAD, GOOD, RUN_BASE, SWEEP_BASE, Case

CHART_CRDS = Path(__file__).resolve().parents[2] / "helm" / "sphinxx" / "crds"


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
        if node.pop("x-kubernetes-list-type", None) == "set":
            node["uniqueItems"] = True
        node.pop("x-kubernetes-validations", None)
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for key in ("properties",):
            if key in node:
                node[key] = {k: _as_json_schema(v) for k, v in node[key].items()}
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                node[key] = _as_json_schema(node[key])
    return node


def _cel_failures(schema: dict, data) -> list[str]:
    """Every x-kubernetes-validations rule under `schema` evaluated on `data`, as the API server does."""
    import celpy

    failures = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations") or []:
        program = env.program(env.compile(rule["rule"]))
        if not bool(program.evaluate({"self": celpy.json_to_cel(data)})):
            failures.append(rule["message"])
    if isinstance(data, dict):
        for key, value in data.items():
            child = (schema.get("properties") or {}).get(key)
            if child is None and isinstance(schema.get("additionalProperties"), dict):
                child = schema["additionalProperties"]
            if child is not None:
                failures += _cel_failures(child, value)
    return failures


def _crd_refusals(kind: str, spec: dict) -> list[str]:
    schema = _schema(kind)["properties"]["spec"]
    errors = [e.message for e in jsonschema.Draft4Validator(_as_json_schema(schema)).iter_errors(spec)]
    return errors or _cel_failures(schema, spec)


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_crd_and_admission_agree_on_every_corpus_case(case: Case) -> None:
    """Where a CRD can express a rule (`crd=True`) the API server refuses the spec too; where it
    cannot, the schema lets it through and only the operator's admission refuses it."""
    refusals = _crd_refusals(case.kind, case.spec)
    if case.crd:
        assert refusals, f"{case.id}: the CRD schema accepts what admission refuses at {case.path}"
    else:
        assert not refusals, f"{case.id}: the CRD refuses it ({refusals}); mark the case crd=True"


@pytest.mark.parametrize(("kind", "name", "spec"), GOOD, ids=[g[1] for g in GOOD])
def test_crd_accepts_what_admission_admits(kind: str, name: str, spec: dict) -> None:
    assert not _crd_refusals(kind, spec)


def test_crd_accepts_partial_layers_and_every_preset() -> None:
    # A size's config layer is partial (no storage.uri), and so may a base be when the operator
    # has a default prefix.
    layered = {
        **SWEEP_BASE,
        "base": {"preset": "debug", "storage": {"keep_last": 4}},
        "overrides": {
            "debug": {"config": {"model": {"llm_weights": "s3://w/debug"}, "storage": {"keep_best": 2}}}
        },
    }
    assert not _crd_refusals("ScalingSweep", layered)
    for preset in ("debug", "tinyllama-1.1b", "mixtral-8x7b"):
        text = (
            Path(__file__).resolve().parents[2] / "sphinxx" / "schema" / "presets" / f"{preset}.yaml"
        ).read_text()
        config = {"preset": preset, **(yaml.safe_load(text) or {})}
        assert not _crd_refusals("TrainingRun", {"config": config}), preset
    assert not _crd_refusals("TrainingRun", {"config": RUN_BASE, "maxWorkers": 2, "suspend": False})


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


def test_the_offline_identity_check_reads_what_the_crds_declare() -> None:
    """`sphinxx validate` and `sphinxx sweep` refuse a document under another apiVersion or kind
    (sphinxx.schema.manifests); what they accept must be exactly what the CRDs serve."""
    from sphinxx.schema.resources import API_VERSION, KINDS

    ours = crds.crds()
    served = {
        (f"{c['spec']['group']}/{v['name']}", c["spec"]["names"]["kind"])
        for c in ours
        for v in c["spec"]["versions"]
        if v["served"]
    }
    assert served == {(API_VERSION, kind) for kind in KINDS}
