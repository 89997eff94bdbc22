"""Spec parsing and validation: every bad spec is refused with the field path at fault."""

from __future__ import annotations

import pytest

from sphinxx.jobs import config as run_config
from sphinxx.operator import expand
from sphinxx.operator.spec import SpecError, validate_run, validate_sweep

from .corpus import CORPUS, RUN_BASE, SWEEP_BASE


@pytest.mark.parametrize(("case", "kind", "name", "spec", "path"), CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_spec_names_its_field(case, kind, name, spec, path) -> None:
    with pytest.raises(SpecError) as err:
        if kind == "TrainingRun":
            validate_run(name, spec)
        else:
            parsed = validate_sweep(name, spec)
            expand.validate_points(name, parsed, spec)
    assert err.value.path == path, err.value


def test_valid_run_resolves_preset_and_bounds() -> None:
    spec, cfg = validate_run("ok", {"config": RUN_BASE, "maxWorkers": 3})
    preset = run_config.load_config(preset="debug", data={"storage": RUN_BASE["storage"]})
    assert cfg.train.steps == preset.train.steps  # the preset's values, not the schema defaults
    assert (cfg.parallel.min_workers, cfg.parallel.max_workers) == (preset.parallel.min_workers, 3)
    assert spec.failure_policy.max_retries == 3 and spec.delete_policy == "Keep"


def test_valid_sweep_parses_camel_case() -> None:
    spec = validate_sweep(
        "ok", {**SWEEP_BASE, "maxParallelRuns": 2, "overrides": {"debug": {"maxWorkers": 2}}}
    )
    assert spec.max_parallel_runs == 2
    assert spec.axes.data_fractions == [0.5, 1.0]
    assert spec.overrides["debug"].max_workers == 2
