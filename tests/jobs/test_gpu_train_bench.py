"""bench/gpu_train.py's CPU smoke mode, so the GPU training bench cannot rot between GPU runs.

It runs the job's loop (DeepSpeed ZeRO-2 over gloo, the debug flavor, synthetic multi-view data on
the 448 canvas) as the GPU machine runs it: from a folder outside the repo, with the packages
that machine lacks (MLflow, Ray, the S3 clients) made unimportable.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ABSENT_ON_THE_GPU_MACHINE = ("mlflow", "ray", "s3fs", "boto3", "botocore", "aiobotocore")
RUNNER = """
import runpy, sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {absent!r}:
            raise ImportError(f"{{name}} is not installed on the GPU machine")
sys.meta_path.insert(0, Absent())
sys.argv = [{script!r}, *{argv!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


def _runner(*argv: str) -> list[str]:
    code = RUNNER.format(
        absent=ABSENT_ON_THE_GPU_MACHINE, script=str(ROOT / "bench" / "gpu_train.py"), argv=list(argv)
    )
    return [sys.executable, "-c", code]


def _check(rows: list[dict], flavor: str) -> dict:
    kinds = [r["kind"] for r in rows]
    assert kinds[:2] == ["env", "config"] and kinds[-1] == "summary" and kinds.count("step") == 3, kinds
    env, config, summary = rows[0], rows[1], rows[-1]
    assert env["device"] == "cpu" and env["deepspeed"] == "0.19.8"
    assert config["flavor"] == flavor and config["zero_stage"] == 2 and config["canvas"] == 448
    assert config["peak_source"].startswith("estimate: fp32 matmul measured on CPU")
    steps = [r for r in rows if r["kind"] == "step"]
    assert [s["warmup"] for s in steps] == [True, False, False]
    assert all(s["views"] > 1 and s["samples"] >= 1 for s in steps)  # real multi-view images every step
    assert summary["steps"] == 2 and summary["failed"] is None
    assert summary["mfu"] > 0 and summary["tokens_per_s"] > 0
    # MFU is the model's FLOP/s over the peak. On CPU the peak is an estimate measured beside
    # whatever else the machine runs, so MFU may pass 1 there; the formula must hold regardless.
    # (Both figures are rounded in the summary: TFLOP/s to 3 decimals, tiny on CPU, the peak to 4.)
    peak = summary["peak_tflops"]
    ratio = summary["model_tflops_per_s"] / peak
    assert abs(summary["mfu"] - ratio) <= (0.0005 + 0.00005 * ratio) / peak + 1e-4, (summary["mfu"], ratio)
    assert config["peak_is_estimate"] and summary["mfu_is_estimate"] and summary["peak_tflops"] > 0
    split = summary["step_time_split"]
    assert set(split) == {"vision", "llm_forward", "llm_backward", "optimizer", "data_wait", "other"}
    assert all(part["seconds"] >= 0 for name, part in split.items() if name != "other")
    assert split["vision"]["seconds"] > 0 and split["llm_backward"]["seconds"] > 0
    return config


WRAPPER = """#!{python}
# `python` as the lent GPU machine has it: MLflow, Ray and the S3 clients are not installed there.
import runpy, sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {absent!r}:
            raise ImportError(f"{{name}} is not installed on the GPU machine")
sys.meta_path.insert(0, Absent())
script, *argv = sys.argv[1:]
sys.argv = [script, *argv]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
def test_gpu_checks_train_mode_cpu_smoke(tmp_path) -> None:
    """The one command of bench/GPU.md's training section, with DEVICE=cpu (setup skipped): both
    models through the job's loop, with the packages the GPU machine lacks (MLflow, Ray, the S3
    clients) unimportable, and no checkpoint written (the measurement stops before its last step)."""
    python = tmp_path / "python"
    python.write_text(WRAPPER.format(python=sys.executable, absent=ABSENT_ON_THE_GPU_MACHINE))
    python.chmod(0o755)
    (tmp_path / "tmp").mkdir()
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "PYTHON": str(python),
        "OUT": str(tmp_path),
        "OMP_NUM_THREADS": "2",
        "TMPDIR": str(tmp_path / "tmp"),  # the bench's default work folder lands here
    }
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_checks.sh"), "train"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    configs = {}
    for name, flavor in (("gpu_train_tinyllama", "debug"), ("gpu_train_mixtral", "debug-moe")):
        rows = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        configs[flavor] = _check(rows, flavor)
    assert configs["debug"]["moe_kernel"] is None
    assert configs["debug-moe"]["num_experts"] == 8 and configs["debug-moe"]["moe_kernel"] == "grouped"
    # The bench's own work folder (data, checkpoints) goes with it; nothing is left in TMPDIR.
    assert not list((tmp_path / "tmp").glob("gpu-train-*"))


def _pump(stream, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


@pytest.mark.slow
def test_sigterm_ends_the_measurement_with_a_summary_and_no_checkpoint(tmp_path) -> None:
    """bench/gpu_checks.sh's time limit sends SIGTERM: the bench prints what it measured and
    exits, instead of the job's stop-and-checkpoint (tens of GB on the GPU machine)."""
    work = tmp_path / "work"
    argv = ("--device", "cpu", "--flavor", "debug", "--steps", "200", "--workdir", str(work))
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen(
        _runner(*argv), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    rows = []
    try:
        while (line := lines.get(timeout=300)) is not None:  # a hang fails here, not at CI's limit
            rows.append(json.loads(line))
            if sum(r["kind"] == "step" for r in rows) == 2:  # one warm-up, one measured
                proc.send_signal(signal.SIGTERM)
                break
        while (line := lines.get(timeout=120)) is not None:
            rows.append(json.loads(line))
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    notes = [r["message"] for r in rows if r["kind"] == "note"]
    assert any(n.startswith("SIGTERM (time limit)") for n in notes), notes
    summary = rows[-1]
    assert summary["kind"] == "summary" and summary["failed"] is None and 1 <= summary["steps"] < 200
    assert not any(p.is_file() for p in (work / "checkpoints").rglob("*"))
