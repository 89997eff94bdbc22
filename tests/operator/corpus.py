"""Bad specs, each with the field path the operator must name. Shared by the unit and e2e tests.

Every entry is (id, kind, name, spec, expected path). The specs are otherwise valid, so the
named field is the only fault.
"""

from __future__ import annotations

RUN_BASE = {"preset": "debug", "storage": {"uri": "file:///tmp/sphinxx-corpus"}}
SWEEP_BASE = {"base": RUN_BASE, "axes": {"models": ["debug", "debug-moe"], "dataFractions": [0.5, 1.0]}}


def _run(**spec):
    return {"config": RUN_BASE, **spec}


def _config(**sections):
    return {"config": {**RUN_BASE, **sections}}


def _sweep(**changes):
    return {**SWEEP_BASE, **changes}


CORPUS = [
    ("wrong-type", "TrainingRun", "bad-type", _run(maxWorkers="two"), "spec.maxWorkers"),
    ("unknown-flavor", "TrainingRun", "bad-flavor", _config(model={"flavor": "gpt-5"}), "spec.config.model.flavor"),
    ("fraction-above-1", "TrainingRun", "bad-fraction", _config(data={"fraction": 1.5}), "spec.config.data.fraction"),
    ("fraction-zero", "TrainingRun", "zero-fraction", _config(data={"fraction": 0}), "spec.config.data.fraction"),
    ("min-above-max", "TrainingRun", "bad-workers", _run(minWorkers=4, maxWorkers=2), "spec.minWorkers"),
    (
        "missing-storage",
        "TrainingRun",
        "no-storage",
        {"config": {"model": {"flavor": "debug"}}},
        "spec.config.storage.uri",
    ),
    ("name-too-long", "TrainingRun", "r" * 70, _run(), "metadata.name"),
    ("negative-steps", "TrainingRun", "bad-steps", _config(train={"steps": -5}), "spec.config.train.steps"),
    ("unknown-field", "TrainingRun", "bad-field", _run(maxWorker=2), "spec.maxWorker"),
    ("unknown-config-key", "TrainingRun", "bad-key", _config(train={"lrr": 1e-3}), "spec.config.train.lrr"),
    ("negative-retries", "TrainingRun", "bad-retries", _run(failurePolicy={"maxRetries": -1}), "spec.failurePolicy.maxRetries"),
    ("unknown-model-axis", "ScalingSweep", "bad-axis", _sweep(axes={"models": ["debug", "gpt-5"], "dataFractions": [1.0]}), "spec.axes.models[1]"),
    ("fraction-axis-zero", "ScalingSweep", "bad-axis-fraction", _sweep(axes={"models": ["debug"], "dataFractions": [0.0, 0.5]}), "spec.axes.dataFractions[0]"),
    ("empty-axis", "ScalingSweep", "empty-axis", _sweep(axes={"models": [], "dataFractions": [1.0]}), "spec.axes.models"),
    ("override-min-above-max", "ScalingSweep", "bad-override", _sweep(overrides={"debug": {"minWorkers": 3, "maxWorkers": 1}}), "spec.overrides.debug"),
    ("sweep-name-too-long", "ScalingSweep", "s" * 64, _sweep(), "metadata.name"),
    ("override-config-bad-value", "ScalingSweep", "bad-size-config", _sweep(overrides={"debug": {"config": {"train": {"steps": -5}}}}), "spec.overrides.debug.config.train.steps"),
    ("override-config-sets-axis", "ScalingSweep", "size-config-axis", _sweep(overrides={"debug": {"config": {"data": {"fraction": 0.1}}}}), "spec.overrides.debug.config.data.fraction"),
]  # fmt: skip
