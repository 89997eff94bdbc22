"""The local sweep runner's planning: the sweep core's admission, points and configs, localised.

Running a sweep locally (interrupted and resumed, compared run by run with the same file on the
cluster) is tests/e2e/test_tiny_sweep.py's last test; `make demo` runs it on local storage.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sphinxx.jobs.local import parse_summary, plan, read_sweep
from sphinxx.schema.fields import SchemaError as SpecError

SPHINXX = str(Path(sys.executable).parent / "sphinxx")


def sweep_file(tmp_path: Path, base: dict, models=("debug",), fractions=(0.5, 1.0), name="loc") -> Path:
    doc = {
        "apiVersion": "sphinxx.dev/v1alpha1",
        "kind": "ScalingSweep",
        "metadata": {"name": name},
        "spec": {"base": base, "axes": {"models": list(models), "dataFractions": list(fractions)}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_plan_expands_like_the_operator_and_localises_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = {"preset": "debug", "data": {"tokenizer": "data/tok", "sources": [{"name": "a", "uri": "data/a"}]}}
    name, raw = read_sweep(str(sweep_file(tmp_path, base, models=("debug", "debug-moe"))))
    points = plan(name, raw, storage_uri="file:///ck", tracking_uri="sqlite:///m.db")
    assert [(p.model, p.fraction) for p, _ in points] == [
        ("debug", 0.5),
        ("debug", 1.0),
        ("debug-moe", 0.5),
        ("debug-moe", 1.0),
    ]
    for point, cfg in points:
        assert (
            cfg.run_id == point.name
            and cfg.model.flavor == point.model
            and cfg.data.fraction == point.fraction
        )
        assert cfg.storage.uri == "file:///ck" and cfg.tracking.uri == "sqlite:///m.db"
        assert cfg.data.tokenizer == str(tmp_path / "data/tok")  # Ray workers run elsewhere
        assert cfg.data.sources[0].uri == str(tmp_path / "data/a")


def test_bad_sweep_is_rejected_with_the_field(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="dataFractions"):
        plan(
            *read_sweep(str(sweep_file(tmp_path, {"preset": "debug"}, fractions=(0.0,)))),
            "file:///c",
            "sqlite:///m",
        )
    result = subprocess.run(
        [SPHINXX, "sweep", "plan", str(sweep_file(tmp_path, {"preset": "debug"}, fractions=(1.5,)))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "dataFractions" in result.stderr


def test_a_parent_path_is_refused_as_on_a_cluster_not_resolved_away(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = {"preset": "debug", "data": {"tokenizer": "../tok", "sources": [{"name": "a", "uri": "./data/a"}]}}
    with pytest.raises(SpecError, match=r"^spec\.base\.data\.tokenizer: must not have a '\.\.' segment"):
        plan(*read_sweep(str(sweep_file(tmp_path, base))), "file:///c", "sqlite:///m")


def test_summary_parsing() -> None:
    lines = ["step 1 ...", '{"sphinxx_summary": true, "status": "succeeded", "step": 4}', "INFO trailing"]
    assert parse_summary(lines)["step"] == 4
    assert parse_summary(["{not json", '{"other": 1}']) is None


def test_results_table_shows_n_d_and_the_held_out_score() -> None:
    from sphinxx.jobs.local import LocalPoint, SweepState, results_table
    from sphinxx.schema.status import PointRow, RunPhase

    state = SweepState("s")
    done = PointRow("s-micro-l-d100", "micro-l", 1.0, RunPhase.SUCCEEDED, step=72, loss=2.05123,
                    tokens=261_234.0, params=9_451_136.0, heldout={"heldout_bpb": 1.23456})  # fmt: skip
    failed = PointRow("s-micro-s-d25", "micro-s", 0.25, RunPhase.FAILED)
    state.points = {done.name: LocalPoint(done, seconds=61.4), failed.name: LocalPoint(failed)}
    header, _, first, second = results_table(state).splitlines()
    assert header.split() == ["point", "model", "data", "status", "step", "N", "D", "loss", "bpb", "time"]
    assert first.split() == ["s-micro-l-d100", "micro-l", "1.00", "succeeded", "72", "9.45M", "261k",
                             "2.0512", "1.2346", "61s"]  # fmt: skip
    assert second.split() == ["s-micro-s-d25", "micro-s", "0.25", "failed", "-", "-", "-", "-", "-", "0s"]
    without = SweepState("s", points={failed.name: LocalPoint(failed)})
    assert "holds out no data: data.heldout_records" in results_table(without)
