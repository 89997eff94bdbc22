"""`kubectl sphinxx status` prints every benchmark per point and each trend, from the sweep's status as
the API server holds it (the CRD's status schema keeps the new fields: nothing pruned)."""

from __future__ import annotations

import itertools

import yaml

from sphinxx.operator import kubectl_plugin
from sphinxx.schema.status import (
    BenchmarkScore,
    PointRow,
    RunPhase,
    ScalingLawStatus,
    SweepStatus,
    dump_status,
    parse_status,
)
from sphinxx.sweep.abilities import ability_report, fit_abilities
from sphinxx.sweep.ability_law import logistic

from .conftest import GROUP, VERSION, Cluster

TRUE = {"floor": 0.2, "ceiling": 0.7, "midpoint": 17.0, "slope": 2.0}


def _rows() -> list[PointRow]:
    import numpy as np

    rows = []
    for i, (n, d) in enumerate(itertools.product((1e6, 3e6, 1e7), (1e9, 3e9, 1e10))):
        scores = {
            "count": BenchmarkScore(
                float(logistic(TRUE, np.log10(6 * n * d))), "exact_match", 64, 100, int(d)
            )
        }
        if i < 2:
            scores["pope"] = BenchmarkScore(0.5 + 0.1 * i, "pope", 32, 100, int(d))
        rows.append(PointRow(f"tiny-p{i}", "debug", 1.0, phase=RunPhase.SUCCEEDED, step=100, params=n,
                             tokens=d, loss=3.0, benchmarks=scores))  # fmt: skip
    return rows


def test_status_prints_the_benchmark_table_and_trends(cluster: Cluster, capsys) -> None:
    with open("examples/sweeps/tiny.yaml") as f:
        sweep = yaml.safe_load(f)
    sweep["metadata"] = {"name": "tiny", "namespace": cluster.ns}
    cluster.api.create_namespaced_custom_object(GROUP, VERSION, cluster.ns, "scalingsweeps", sweep)
    rows = _rows()
    law = ScalingLawStatus(error="not fitted here", benchmarks=fit_abilities(rows, resamples=10))
    status = SweepStatus(progress="9/9", points=rows, scaling_law=law)
    cluster.api.patch_namespaced_custom_object_status(
        GROUP, VERSION, cluster.ns, "scalingsweeps", "tiny", {"status": dump_status(status)}
    )
    held = parse_status(SweepStatus, cluster.status("scalingsweeps", "tiny"))
    assert held.points == rows and held.scaling_law == law  # the CRD kept every field
    capsys.readouterr()
    code = kubectl_plugin.main(
        ["--kubeconfig", str(cluster.kube.kubeconfig), "-n", cluster.ns, "status", "tiny"]
    )
    out = capsys.readouterr().out
    assert code == 0
    report = ability_report(rows, law.benchmarks)
    assert out.rstrip().endswith(report.rstrip()) and "exact_match" in report
    assert "trend: count = 0.2 + (0.7 - 0.2)" in out and "trend: pope: no trend (too few points" in out
