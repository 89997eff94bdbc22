"""examples/sweeps/tiny.yaml: the local runner takes it as written; `kubectl apply` and the operator
take it once its data and checkpoints point at S3 (as the end-to-end test rewrites it); and its
data paths are what `make demo` writes.

Cheap (no servers): the slow end-to-end test depends on these holding.
"""

from __future__ import annotations

import math
from typing import Any

import jsonschema
import pytest
import yaml

from sphinxx.jobs.data.synth_tasks import SOURCES
from sphinxx.jobs.local import local_defaults
from sphinxx.schema.fields import SchemaError
from sphinxx.sweep import points as expand

from .conftest import DEMO_DATA, REPO, SYNTH_SIZE, TINY_SWEEP, cluster_sweep

CRD = REPO / "helm" / "sphinxx" / "crds" / "scalingsweeps.yaml"


def _accepted(sweep: dict[str, Any]) -> list[expand.Point]:
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.Draft4Validator(schema).validate(sweep)  # what a schema-enforcing API server checks
    name, raw = sweep["metadata"]["name"], sweep["spec"]
    parsed = expand.admit_sweep(name, raw).spec  # what the operator checks, point by point
    return expand.points(name, parsed)


def test_tiny_sweep_needs_only_its_s3_locations_for_a_cluster() -> None:
    sweep = yaml.safe_load(TINY_SWEEP.read_text())
    # As written (laptop paths, no checkpoint prefix) the operator asks for the one missing field.
    with pytest.raises(SchemaError, match=r"spec\.base\.storage\.uri: is required"):
        _accepted(sweep)
    # The local runner resolves each point from its preset and sets storage itself.
    name, raw = sweep["metadata"]["name"], sweep["spec"]
    expand.admit_sweep(name, raw, local_defaults("file:///tmp/checkpoints", "sqlite:///tmp/mlflow.db"))

    on_s3 = cluster_sweep(TINY_SWEEP, "s3://bucket/data", "s3://bucket/sweeps")
    points = _accepted(on_s3)
    assert [(p.model, p.fraction) for p in points] == [
        ("debug", 0.5),
        ("debug", 1.0),
        ("debug-moe", 0.5),
        ("debug-moe", 1.0),
    ]
    data = on_s3["spec"]["base"]["data"]
    assert data["tokenizer"] == "s3://bucket/data/tokenizer"
    assert all(s["uri"] == f"s3://bucket/data/{s['name']}" for s in data["sources"])


def test_tiny_sweep_reads_every_source_the_synthetic_set_has() -> None:
    data = yaml.safe_load(TINY_SWEEP.read_text())["spec"]["base"]["data"]
    assert data["tokenizer"] == f"{DEMO_DATA}/tokenizer"
    assert {(s["name"], s["uri"], s["domain"]) for s in data["sources"]} == {
        (name, f"{DEMO_DATA}/{name}", domain) for name, domain, _, _ in SOURCES
    }


def test_tiny_sweep_steps_follow_the_data_and_leave_room_for_a_kill() -> None:
    """Full-data points train ~2x longer; the killed point commits before its last step."""
    base = yaml.safe_load(TINY_SWEEP.read_text())["spec"]["base"]
    steps_full = math.ceil(SYNTH_SIZE * base["data"]["epochs"] / base["train"]["global_batch"])
    assert base["train"]["steps"] == 0
    assert steps_full >= 3 * base["train"]["checkpoint_interval"]
