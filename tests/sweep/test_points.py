"""Point names and expansion: the same points, names and configs wherever a sweep runs."""

from __future__ import annotations

import re

from sphinxx.schema.flavors import FLAVORS
from sphinxx.sweep import points as sweep_points
from sphinxx.sweep.points import admit_sweep, fraction_code, point_name, point_spec
from tests.schema.corpus import RUN_BASE

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def test_point_names_are_unique_valid_and_bounded() -> None:
    sweep = "s" * 63
    models = ["debug", "tinyllama-1.1b", "mixtral-8x7b"]
    fractions = [0.125, 0.25, 1 / 3, 1.0]
    names = {point_name(sweep, m, f) for m in models for f in fractions}
    assert len(names) == len(models) * len(fractions)
    for name in names:
        assert len(name) <= 54 and DNS1123_SUBDOMAIN.match(name), name
    assert point_name("demo", "tinyllama-1.1b", 0.25) == "demo-tinyllama-1-1b-d25"
    assert fraction_code(0.125) == "12p5" and fraction_code(1.0) == "100"


def test_points_run_smallest_model_then_smallest_data_first() -> None:
    raw = {
        "base": RUN_BASE,
        "axes": {"models": ["tinyllama-1.1b", "debug-moe", "debug"], "dataFractions": [1.0, 0.5]},
    }
    order = [(p.model, p.fraction) for p in sweep_points.points("demo", admit_sweep("demo", raw).spec)]
    assert order == sorted(order, key=lambda mf: (FLAVORS[mf[0]].params, mf[1]))
    assert order[0] == ("debug", 0.5) and order[-1] == ("tinyllama-1.1b", 1.0)


def test_a_point_spec_names_its_size_preset_unless_the_base_names_one() -> None:
    raw = {
        "base": {k: v for k, v in RUN_BASE.items() if k != "preset"},
        "axes": {"models": ["debug-moe"], "dataFractions": [1.0]},
    }
    (point,) = sweep_points.points("demo", admit_sweep("demo", raw).spec)
    assert point_spec(raw, point)["config"]["preset"] == "debug-moe"
    named = {**raw, "base": RUN_BASE}
    assert point_spec(named, point)["config"]["preset"] == "debug"


def test_a_sizes_pod_settings_merge_over_the_sweeps() -> None:
    raw = {
        "base": RUN_BASE,
        "axes": {"models": ["debug", "debug-moe"], "dataFractions": [1.0]},
        "resources": {"schedulerName": "volcano", "podLabels": {"team": "vision"}, "cpu": "8"},
        "overrides": {
            "debug-moe": {
                "cpu": "16",
                "resources": {
                    "shmSize": "0",
                    "podLabels": {"size": "moe"},
                    "extraResources": {"rdma/hca": 1},
                },
            }
        },
    }
    admit_sweep("pods", raw)
    by_model = {
        p.model: point_spec(raw, p) for p in sweep_points.points("pods", admit_sweep("pods", raw).spec)
    }
    assert by_model["debug"]["resources"] == raw["resources"]
    assert by_model["debug-moe"]["resources"] == {
        "schedulerName": "volcano",
        "podLabels": {"team": "vision", "size": "moe"},  # objects merge key by key
        "cpu": "16",
        "shmSize": "0",
        "extraResources": {"rdma/hca": 1},
    }
