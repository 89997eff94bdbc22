"""The local sweep runner: planning is the operator's expansion; a run trains every point and resumes.

The slow test runs `sphinxx sweep run FILE --local` as a user would, interrupts it after the
first point has finished, and resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sphinxx.jobs.local import PointResult, fit_points, parse_summary, plan, read_sweep
from sphinxx.jobs.schema.fields import SchemaError as SpecError

from .conftest import SOURCES, TINY_MODEL

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
            cfg.run_id == point.name and cfg.model.flavor == point.model and cfg.data.fraction == point.fraction
        )
        assert cfg.storage.uri == "file:///ck" and cfg.tracking.uri == "sqlite:///m.db"
        assert cfg.data.tokenizer == str(tmp_path / "data/tok")  # Ray workers run elsewhere
        assert cfg.data.sources[0].uri == str(tmp_path / "data/a")


def test_bad_sweep_is_rejected_with_the_field(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="dataFractions"):
        read_sweep(str(sweep_file(tmp_path, {"preset": "debug"}, fractions=(0.0,))))
    result = subprocess.run(
        [SPHINXX, "sweep", "plan", str(sweep_file(tmp_path, {"preset": "debug"}, fractions=(1.5,)))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "dataFractions" in result.stderr


def test_summary_parsing_and_fit_inputs() -> None:
    lines = ["step 1 ...", '{"sphinxx_summary": true, "status": "succeeded", "step": 4}', "INFO trailing"]
    assert parse_summary(lines)["step"] == 4
    assert parse_summary(["{not json", '{"other": 1}']) is None
    done = PointResult("a", "debug", 0.5, status="succeeded", loss=2.0, num_params=1e6, tokens=1e4)
    failed = PointResult("b", "debug", 1.0, status="failed", loss=None)
    (point,) = fit_points([done, failed])
    assert (point.params, point.data, point.loss) == (1e6, 1e4, 2.0)


@pytest.mark.slow
def test_local_sweep_runs_is_interrupted_and_resumes(tmp_path: Path, synth) -> None:
    base = {
        "preset": "debug",
        "model": {"overrides": dict(TINY_MODEL)},
        "data": {
            "tokenizer": synth.tokenizer_uri,
            "seq_len": 768,
            "canvas": 224,
            "epochs": 0.2,
            "sources": [
                {"name": n, "uri": f"{synth.root}/{n}", "weight": w, "domain": d} for n, d, w in SOURCES
            ],
        },
        # steps follow the data (train.steps 0): the 0.5 point trains on half the samples
        "train": {
            "steps": 0,
            "global_batch": 4,
            "micro_batch": 2,
            "lr": 3e-3,
            "checkpoint_interval": 2,
            "log_interval": 1,
        },
        "parallel": {"min_workers": 1, "max_workers": 1, "zero_stage": 0},
    }
    path = sweep_file(tmp_path, base, fractions=(0.5, 1.0))
    workdir = tmp_path / "work"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    argv = [SPHINXX, "sweep", "run", str(path), "--local", "--workdir", str(workdir)]
    state_path = workdir / "loc" / "state.json"

    first = subprocess.Popen(
        argv,
        env=env,
        stdout=open(tmp_path / "first.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if state_path.exists() and any(
            p["status"] == "succeeded" for p in json.loads(state_path.read_text())["points"].values()
        ):
            break
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(1)
    os.killpg(first.pid, signal.SIGKILL)  # the laptop goes to sleep, or the user hits Ctrl-C twice
    first.wait(30)
    interrupted = json.loads(state_path.read_text())["points"]
    done_first = [n for n, p in interrupted.items() if p["status"] == "succeeded"]
    assert len(done_first) == 1

    second = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert f"[{done_first[0]}] already succeeded" in second.stdout
    final = json.loads(state_path.read_text())
    assert all(p["status"] == "succeeded" for p in final["points"].values())
    assert final["points"][done_first[0]]["attempts"] == 1  # not trained again
    steps = {p["fraction"]: p["step"] for p in final["points"].values()}
    assert steps[0.5] < steps[1.0]  # the data axis is real: more data, more steps
    assert final["fit"] is not None and "scaling law" in second.stdout
    assert (workdir / "loc" / "scaling_law.png").read_bytes()[:4] == b"\x89PNG"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'loc' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweep-loc")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sphinxx.dev/role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2  # the resume created no duplicates
    assert {r.info.status for r in parents + children} == {"FINISHED"}  # each run ends with its point
    assert all(client.get_metric_history(c.info.run_id, "loss") for c in children)
