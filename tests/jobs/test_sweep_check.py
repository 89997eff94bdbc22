"""`sphinxx sweep check FILE`: the operator's pre-flight check from a laptop, against moto S3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SPHINXX = str(Path(sys.executable).parent / "sphinxx")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # a moto server process


def _check(path: Path | str, s3_server, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **s3_server.env}
    return subprocess.run(
        [SPHINXX, "sweep", "check", str(path)], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def _sweep(tmp_path: Path, bucket: str, weights: str) -> Path:
    base = {
        "preset": "debug",
        "model": {"llm_weights": weights},
        "data": {
            "tokenizer": f"s3://{bucket}/tok",
            "sources": [{"name": "a", "uri": f"s3://{bucket}/data/a"}],
        },
        "storage": {"uri": f"s3://{bucket}/runs"},
    }
    doc = {"apiVersion": "sphinxx.dev/v1alpha1", "kind": "ScalingSweep", "metadata": {"name": "chk"},
           "spec": {"base": base,
                    "axes": {"models": ["debug", "debug-moe"], "dataFractions": [0.5, 1.0]}}}  # fmt: skip
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_reachable_sweep_passes_and_a_missing_uri_is_named(s3_server, s3_bucket, tmp_path) -> None:
    client = s3_server.client()
    for key in ("tok/tokenizer.json", "data/a/manifest.json", "weights/tiny/model.safetensors"):
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"{}")
    good = _check(_sweep(tmp_path, s3_bucket, f"s3://{s3_bucket}/weights/tiny"), s3_server, tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "pre-flight of sweep chk: 4 inputs of 4 points" in good.stdout
    assert f"ok    model.llm_weights: s3://{s3_bucket}/weights/tiny (read; all points)" in good.stdout
    assert f"ok    storage.uri: s3://{s3_bucket}/runs (write; all points)" in good.stdout

    missing = f"s3://{s3_bucket}/weights/other"
    bad = _check(_sweep(tmp_path, s3_bucket, missing), s3_server, tmp_path)
    assert bad.returncode == 1
    assert f"FAIL  model.llm_weights: {missing} does not exist" in bad.stdout
    assert "1 of 4 inputs cannot be used" in bad.stderr


def test_the_family_example_fails_on_its_placeholder_buckets_with_clear_messages(s3_server, tmp_path) -> None:
    result = _check(ROOT / "examples" / "sweeps" / "sphinx-x-family.yaml", s3_server, tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "pre-flight of sweep sphinx-x-family: 36 inputs of 12 points" in lines[0]
    fails = [line for line in lines if line.startswith("FAIL")]
    assert len(fails) == 36, result.stdout  # nothing exists on this S3
    assert any(
        line.startswith("FAIL  model.llm_weights: s3://YOUR-BUCKET/weights/mixtral-8x7b does not exist")
        for line in fails
    )
    assert any(
        line.startswith("FAIL  storage.uri: s3://sphinxx-checkpoints/sweeps") and "bucket" in line
        for line in fails
    )
    assert any(line.startswith("FAIL  eval.benchmarks.tasks[0]: s3://sphinxx-bench/tasks/vqav2_val.jsonl")
               for line in fails)  # fmt: skip
    assert "36 of 36 inputs cannot be used" in result.stderr


def test_the_local_runner_runs_the_same_pre_flight_before_it_starts_ray(tmp_path) -> None:
    """A data path that does not exist: `sweep run --local` stops in seconds with the finding (not a
    minute later with Ray tracebacks), and nothing is started: no Ray, no MLflow store, no state."""
    data = tmp_path / "data"
    base = {
        "data": {"tokenizer": str(data / "tokenizer"), "sources": [{"name": "a", "uri": str(data / "nope")}]},
    }
    doc = {"apiVersion": "sphinxx.dev/v1alpha1", "kind": "ScalingSweep", "metadata": {"name": "gone"},
           "spec": {"base": base, "axes": {"models": ["debug"], "dataFractions": [1.0]}}}  # fmt: skip
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    (data / "tokenizer").mkdir(parents=True)
    (data / "tokenizer" / "tokenizer.json").write_text("{}")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    done = subprocess.run(
        [SPHINXX, "sweep", "run", str(path), "--local", "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    fails = [line for line in done.stderr.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1 and fails[0].startswith("FAIL  data.sources[0] (a): "), done.stderr
    assert f"{data / 'nope'}/manifest.json" in fails[0]
    assert "error: 1 input(s) above cannot be used; nothing was started" in done.stderr
    assert "Traceback" not in done.stderr and "ray" not in done.stderr.lower()
    assert not (tmp_path / "work" / "gone" / "mlflow.db").exists()
    assert not (tmp_path / "work" / "gone" / "state.json").exists()
