"""The operator and the local runner give the same per-benchmark table and trends from the same points.

Each point's benchmark scores are committed with its checkpoint (the metrics key `benchmarks`,
through the real storage commit path, on a `file://` store). The operator reads the newest
checkpoint (`operator.checkpoints.latest`), mirrors it into the TrainingRun's status
(`decide.decide_run`) and rolls the runs up into the sweep's rows (`status.rollup`); the local
runner reads the same checkpoints itself (`LocalSweep._read_checkpoint`). Both hand their rows to
the sweep core: the rows, the table both CLIs print, the trends of `status.scalingLaw.benchmarks`
and the parent run's artifacts must agree.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from sphinxx.jobs.local import LocalPoint, LocalSweep, SweepState
from sphinxx.operator import checkpoints, decide, reconcile, status
from sphinxx.schema.resources import FailurePolicy
from sphinxx.schema.status import PointRow, RunPhase, RunStatus, SweepStatus, dump_status, parse_status
from sphinxx.storage import CheckpointStore, CommitMetadata
from sphinxx.sweep import mlflow_runs
from sphinxx.sweep.abilities import ability_report, benchmark_table, plot_name
from sphinxx.sweep.ability_law import logistic
from sphinxx.sweep.points import Point
from sphinxx.sweep.results import fit_metrics, fit_sweep

SIZES, TOKENS = (1e6, 3e6, 1e7), (1e9, 3e9, 1e10)
COMPLETE = {"status": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}}  # the RayJob's, done
COUNT = {"floor": 0.2, "ceiling": 0.8, "midpoint": 16.8, "slope": 2.5}  # a fraction, rising with C


def _benchmarks(i: int, n: float, d: float, rng: np.random.Generator) -> dict[str, dict]:
    x = math.log10(6 * n * d)
    out = {
        "count": {"score": float(logistic(COUNT, np.array(x))) + float(rng.normal(0, 0.005)),
                  "metric": "exact_match", "samples": 64, "step": 100, "tokens": int(d)},
        "mme": {"score": 600.0 + 300.0 * (x - 15.5) + float(rng.normal(0, 10)), "metric": "mme",
                "samples": 40, "step": 100, "tokens": int(d)},
        "flat": {"score": 0.5, "metric": "pope", "samples": 32, "step": 100, "tokens": int(d)},
    }  # fmt: skip
    if i < 3:  # scored on three points only: too few for a trend
        out["rare"] = {
            "score": 0.1 * i,
            "metric": "vqa_accuracy",
            "samples": 8,
            "step": 100,
            "tokens": int(d),
        }
    return out


def _commit(prefix: str, tmp_path: Path, only: tuple[str, ...] = ()) -> list[Point]:
    """Nine points, each with one committed checkpoint carrying N, D, a loss and benchmark scores
    (`only` those benchmarks, if given)."""
    rng, points = np.random.default_rng(3), []
    for i, (n, d) in enumerate(itertools.product(SIZES, TOKENS)):
        name = f"p{i}"
        shard = tmp_path / "shards" / name
        shard.mkdir(parents=True)
        (shard / "weights.bin").write_bytes(b"w" * 16)
        store = CheckpointStore(prefix, name)
        with store.writer(100) as writer:
            writer.upload_dir(shard)
        scores = {k: v for k, v in _benchmarks(i, n, d, rng).items() if k in (only or k)}
        metrics = {"num_params": n, "tokens_seen": d, "loss": 2.0 + 300 / n**0.3 + 300 / d**0.3,
                   "benchmarks": scores}  # fmt: skip
        store.commit(100, writers=[writer.finish()], metadata=CommitMetadata(metrics=metrics, final=True))
        points.append(Point("tiny", 1.0, name))
    return points


def _operator_rows(prefix: str, points: list[Point]) -> list[PointRow]:
    children = {}
    for point in points:
        checkpoint = checkpoints.latest(prefix, point.name)
        assert checkpoint is not None
        obs = decide.RunObserved(
            generation=1, policy=FailurePolicy(max_retries=2), suspend=False, queued=False, bounds=(1, 1),
            status=parse_status(RunStatus, {"attempt": 1, "phase": "Running"}),
            job=status.observe_rayjob(COMPLETE),
            job_suspended=False, admitted=True, resume_token=None, checkpoint=checkpoint, cluster_bounds=None,
            now=1.8e9, now_iso="2027-01-15T08:00:00Z",
        )  # fmt: skip
        run = decide.decide_run(obs).status
        assert run.phase == RunPhase.SUCCEEDED
        children[point.name] = {
            "metadata": {"name": point.name},
            "status": dump_status(run),
        }  # as the server holds it
    return status.rollup(points, children, False, [], 1, "2027-01-15T08:00:00Z").points


def _local_rows(prefix: str, points: list[Point]) -> list[PointRow]:
    rows = []
    for point in points:
        row = PointRow(point.name, point.model, point.fraction, phase=RunPhase.SUCCEEDED, attempt=1)
        storage = SimpleNamespace(uri=prefix, endpoint_url=None)
        LocalSweep._read_checkpoint(None, point.name, storage, row)  # type: ignore[arg-type]
        rows.append(row)
    return rows


def test_operator_and_local_runner_give_the_same_benchmark_table_and_trends(tmp_path: Path) -> None:
    prefix = f"file://{tmp_path / 'ckpt'}"
    points = _commit(prefix, tmp_path)
    cluster, local = _operator_rows(prefix, points), _local_rows(prefix, points)
    # the TrainingRun's status carries the committed scores, typed
    assert [dump_status(r) for r in cluster] == [dump_status(r) for r in local]
    assert cluster[0].benchmarks is not None and cluster[0].benchmarks["count"].metric == "exact_match"
    assert cluster[0].benchmarks["count"].tokens == 1e9 and cluster[0].benchmarks["count"].samples == 64
    assert cluster[0].heldout is None and cluster[0].params == 1e6  # the loss fit's inputs are unchanged
    table = benchmark_table(cluster)
    assert table == benchmark_table(local)
    header, metrics, _, *lines = table.splitlines()
    assert header.split() == ["point", "N", "D", "C=6ND", "count", "flat", "mme", "rare"]
    assert metrics.split() == ["exact_match", "pope", "mme", "vqa_accuracy"]
    assert len(lines) == 9 and lines[0].split()[:4] == ["p0", "1e6", "1e9", "6e15"]
    assert lines[-1].split()[-1] == "-"  # p8 has no score on rare

    law_c, _, _ = fit_sweep(cluster, resamples=20)
    law_l, _, _ = fit_sweep(local, resamples=20)
    assert dump_status(law_c) == dump_status(law_l)
    assert fit_metrics(law_c) == fit_metrics(law_l)
    trends = {t.benchmark: t for t in law_c.benchmarks}
    assert list(trends) == ["count", "flat", "mme", "rare"]
    count = trends["count"]
    assert count.form == "logistic-log-compute" and count.num_points == 9 and not count.reason
    estimates = {e.name: e for e in count.estimates}
    assert estimates["midpoint"].value == pytest.approx(COUNT["midpoint"], abs=0.3)
    assert estimates["ceiling"].low <= estimates["ceiling"].value <= estimates["ceiling"].high
    assert len(count.band) == 25 and count.uncertainty is not None and count.uncertainty.used > 10
    assert trends["mme"].high == 2000.0 and trends["mme"].form  # MME's own scale
    assert "every point scores 0.5" in trends["flat"].reason and not trends["flat"].estimates
    assert (
        "too few points" in trends["rare"].reason
        and "6 succeeded point(s) without a score" in trends["rare"].note
    )
    assert "bench_count_midpoint_low" in fit_metrics(law_c) and "bench_flat_floor" not in fit_metrics(law_c)
    # the text both CLIs print under the points
    assert ability_report(cluster, law_c.benchmarks) == ability_report(local, law_l.benchmarks)
    assert "trend: rare: no trend (too few points" in ability_report(cluster, law_c.benchmarks)


@pytest.mark.slow  # two runners' fits, six plots and a fresh MLflow store (~9 s unloaded)
def test_both_write_a_plot_per_benchmark_and_the_same_table_to_the_parent_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    import sphinxx.sweep.abilities
    import sphinxx.sweep.scaling_law

    # fast: the numbers are the first test's business
    monkeypatch.setattr(sphinxx.sweep.abilities, "TREND_RESAMPLES", 10)
    monkeypatch.setattr(sphinxx.sweep.scaling_law, "RESAMPLES", 10)
    prefix = f"file://{tmp_path / 'ckpt'}"
    points = _commit(prefix, tmp_path, only=("count", "rare"))  # a trend, and none: a plot each
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parents = [mlflow_runs.ensure_parent_run(uri, "exp", mlflow_runs.SweepRef("ns", s, f"uid-{s}"))
               for s in ("cluster", "local")]  # fmt: skip
    law = reconcile._fit(SweepStatus(points=_operator_rows(prefix, points)), uri, parents[0], "demo")
    workdir = tmp_path / "local"
    workdir.mkdir()
    state = SweepState("demo", parent_run_id=parents[1])
    state.points = {r.name: LocalPoint(r) for r in _local_rows(prefix, points)}
    runner = SimpleNamespace(name="demo", workdir=workdir, tracking_uri=uri)
    LocalSweep._finish(runner, state)  # type: ignore[arg-type]
    assert parse_status(SweepStatus, {"scalingLaw": state.scaling_law}).scaling_law == law
    # the plots beside the loss plot, one per benchmark (with or without a trend)
    for name in ("count", "rare"):
        png = workdir / plot_name(name)
        assert png.read_bytes()[:4] == b"\x89PNG", name
    client = MlflowClient(uri)
    tables = []
    for parent in parents:
        root = Path(client.download_artifacts(parent, "", str(tmp_path / parent)))
        assert sorted(p.name for p in (root / "benchmarks").iterdir()) == [
            "benchmark_count.png", "benchmark_rare.png"]  # fmt: skip
        tables.append(
            (json.loads((root / "benchmarks.json").read_text()), (root / "benchmarks.txt").read_text())
        )
        metrics = client.get_run(parent).data.metrics
        assert metrics["bench_count_num_points"] == 9 and "bench_count_slope_high" in metrics
    assert tables[0] == tables[1]
    body, text = tables[0]
    assert body["columns"] == ["point", "model", "data_fraction", "phase", "N", "D", "C", "count", "rare"]
    assert (
        body["data"][0][:7] == ["p0", "tiny", 1.0, "Succeeded", 1e6, 1e9, 6e15]
        and body["data"][8][-1] is None
    )
    assert text.startswith("point") and "exact_match" in text
