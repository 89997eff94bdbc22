"""Admission refuses every bad spec of the corpus with the field path at fault, and admits the good ones."""

from __future__ import annotations

import pytest

from sphinxx.schema.admission import admit_run
from sphinxx.schema.fields import SchemaError
from sphinxx.schema.run import load_config
from sphinxx.sweep.points import admit_sweep, point_spec, points

from .corpus import BAD, GOOD, RUN_BASE, Case


def admit(kind: str, name: str, spec: dict) -> None:
    if kind == "TrainingRun":
        admit_run(name, spec)
    else:
        admit_sweep(name, spec)


def test_the_corpus_is_large_and_covers_both_kinds() -> None:
    assert len(BAD) >= 40
    assert {c.kind for c in BAD} == {"TrainingRun", "ScalingSweep"}
    assert len({c.id for c in BAD}) == len(BAD) and len({c.name for c in BAD}) == len(BAD)


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_bad_spec_is_refused_naming_its_field(case: Case) -> None:
    with pytest.raises(SchemaError) as err:
        admit(case.kind, case.name, case.spec)
    assert err.value.path == case.path, str(err.value)
    assert str(err.value).startswith(f"{case.path}: ") and err.value.reason


@pytest.mark.parametrize(("kind", "name", "spec"), GOOD, ids=[g[1] for g in GOOD])
def test_good_spec_is_admitted(kind: str, name: str, spec: dict) -> None:
    admit(kind, name, spec)


def test_an_admitted_run_carries_the_resolved_config_at_its_bounds() -> None:
    admitted = admit_run("ok", {"config": RUN_BASE, "maxWorkers": 3})
    preset = load_config(preset="debug", data={"storage": RUN_BASE["storage"]})
    assert admitted.config.train.steps == preset.train.steps  # the preset's, not the schema default
    assert admitted.bounds == (preset.parallel.min_workers, 3)
    assert admitted.spec.failure_policy.max_retries == 3 and admitted.spec.delete_policy == "Keep"


def test_every_point_of_an_admitted_sweep_is_an_admitted_run() -> None:
    for kind, name, spec in GOOD:
        if kind != "ScalingSweep":
            continue
        parsed = admit_sweep(name, spec).spec
        for point in points(name, parsed):
            cfg = admit_run(point.name, point_spec(spec, point)).config
            assert (cfg.model.flavor, cfg.data.fraction) == (point.model, point.fraction)


def test_credentials_are_refused_before_anything_else_is_read() -> None:
    """A credential is named even where the spec is otherwise broken: it must never be echoed back."""
    spec = {"config": {"train": {"lrr": 1}, "tracking": {"password": "hunter2"}}, "maxWorker": 1}
    with pytest.raises(SchemaError) as err:
        admit_run("leaky", spec)
    assert err.value.path == "spec.config.tracking.password" and "hunter2" not in str(err.value)
    assert "envFromSecrets" in str(err.value)


def test_errors_are_cached_and_still_raised() -> None:
    bad = {"config": {**RUN_BASE, "train": {"steps": -1}}}
    for _ in range(2):
        with pytest.raises(SchemaError, match=r"^spec\.config\.train\.steps: must be >= 0"):
            admit_run("cached", bad)
