"""The operator and the local runner fit the same law from the same checkpoints.

Both read a point's fit inputs from its newest committed checkpoint's metrics (the operator
through the TrainingRun's status, the local runner from the manifest itself) and hand the rows
to `results.fit_sweep`; the status they write must agree field by field, intervals and
leave-one-out errors included, and with held-out metrics the fit must switch L to heldout_bpb
and fit each domain.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from sphinxx.jobs.local import LocalSweep
from sphinxx.operator.status import _point_row
from sphinxx.schema.status import PointRow, RunPhase, dump_status
from sphinxx.sweep.points import Point
from sphinxx.sweep.results import fit_metrics, fit_sweep

DOMAINS = ("language", "vision", "vision-language", "ocr", "set-of-mark")


def _manifests(heldout: bool) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(5)
    out = {}
    for i, (n, d) in enumerate(itertools.product((1e8, 3e8, 1e9), (1e9, 3e9, 1e10))):
        base = 1.7 + 400 / n**0.34 + 410 / d**0.28
        metrics = {
            "num_params": n,
            "tokens_seen": d,
            "loss": base * float(np.exp(rng.normal(0, 0.005))),
            "step": 100.0,
        }
        if heldout:
            metrics["heldout_bpb"] = 0.8 * base
            for k, domain in enumerate(DOMAINS[:3]):  # the other two domains only on some points
                metrics[f"heldout_bpb/{domain}"] = (
                    (0.7 + 0.05 * k) * base * float(np.exp(rng.normal(0, 0.003)))
                )
            if i % 2:
                metrics["heldout_bpb/ocr"] = 0.9 * base
        out[f"p{i}"] = metrics
    return out


def _operator_rows(manifests: dict[str, dict[str, float]]) -> list[PointRow]:
    rows = []
    for name, metrics in manifests.items():
        child = {
            "status": {
                "phase": "Succeeded",
                "lastCheckpoint": {"step": 100, "uri": f"s3://b/{name}"},
                "metrics": metrics,
            }
        }
        rows.append(_point_row(Point("tiny", 1.0, name), child))
    return rows


def _local_rows(manifests: dict[str, dict[str, float]], monkeypatch: pytest.MonkeyPatch) -> list[PointRow]:
    import sphinxx.jobs.stores

    class Store:
        def __init__(self, uri: str, run_id: str, **options: object) -> None:
            self.run_id = run_id

        def latest(self) -> SimpleNamespace:
            manifest = SimpleNamespace(metrics=manifests[self.run_id])
            return SimpleNamespace(step=100, uri=f"s3://b/{self.run_id}", manifest=manifest)

    monkeypatch.setattr(sphinxx.jobs.stores, "CheckpointStore", Store)
    rows = []
    for name in manifests:
        row = PointRow(name, "tiny", 1.0, phase=RunPhase.SUCCEEDED)
        cfg = SimpleNamespace(storage=SimpleNamespace(uri="s3://b", endpoint_url=None), run_id=name)
        LocalSweep._read_checkpoint(None, cfg.run_id, cfg.storage, row)  # type: ignore[arg-type]
        rows.append(row)
    return rows


@pytest.mark.parametrize("heldout", [False, True])
def test_operator_and_local_runner_fit_the_same_law(heldout: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    manifests = _manifests(heldout)
    cluster, local = _operator_rows(manifests), _local_rows(manifests, monkeypatch)
    assert [dump_status(r) for r in cluster] == [dump_status(r) for r in local]
    law_c, _, _ = fit_sweep(cluster, resamples=30)
    law_l, _, _ = fit_sweep(local, resamples=30)
    assert dump_status(law_c) == dump_status(law_l)
    assert fit_metrics(law_c) == fit_metrics(law_l)
    law = dump_status(law_c)
    assert law["form"] == "chinchilla" and law["uncertainty"]["used"] > 0 and law["loo"]["numPoints"] == 9
    assert {e["name"] for e in law["estimates"]} == {"E", "A", "alpha", "B", "beta", "G", "a", "b"}
    assert all(e["low"] <= e["high"] for e in law["estimates"])
    assert len(law["residuals"]) == 9 and set(law["computeOptimal"]) == {"G", "a", "b"}
    if heldout:
        assert law["lossKey"] == "heldout_bpb" and "held-out" in law["lossAxis"]
        # only the domains every point has; ocr is on half of them
        assert [d["domain"] for d in law["domains"]] == ["language", "vision", "vision-language"]
        assert {d["lossKey"] for d in law["domains"]} == {f"heldout_bpb/{d}" for d in DOMAINS[:3]}
        assert "fit_vision-language_alpha_low" in fit_metrics(law_c)
        observed = {r["name"]: r["observed"] for r in law["residuals"]}
        assert observed["p0"] == pytest.approx(manifests["p0"]["heldout_bpb"])
    else:
        assert law["lossKey"] == "loss" and not law.get("domains")
        assert all(r.heldout is None for r in cluster)  # no empty map in every row of the status


def test_a_requested_loss_key_wins_and_a_point_without_it_is_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifests = _manifests(heldout=True)
    rows = _operator_rows(manifests)
    law, _, inputs = fit_sweep(rows, loss_key="loss", resamples=0)
    assert law.loss_key == "loss" and law.num_points == 9 and law.uncertainty is None
    del manifests["p3"]["heldout_bpb"]
    law, _, inputs = fit_sweep(_operator_rows(manifests), resamples=0)
    assert law.loss_key == "loss"  # not every point has heldout_bpb: training loss, and it says so
    law, _, inputs = fit_sweep(_operator_rows(manifests), loss_key="heldout_bpb", resamples=0)
    assert law.num_points == 8 and "p3" in law.note and len(inputs) == 8


def test_per_source_heldout_metrics_stay_out_of_the_rows_and_the_domain_fits() -> None:
    from sphinxx.sweep.results import row_metrics

    row = row_metrics({"loss": 2.0, "num_params": 1e6, "tokens_seen": 1e7, "heldout_bpb": 1.5,
                       "heldout_bpb/ocr": 1.7, "heldout_bpb/source:papers": 1.8,
                       "heldout_loss": 2.1})  # fmt: skip
    assert row["heldout"] == {"heldout_bpb": 1.5, "heldout_bpb/ocr": 1.7}
