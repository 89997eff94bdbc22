"""Cost before running (`sphinxx.jobs.cost`, `sphinxx sweep plan --cost`).

References: `sphinxx model info`'s per-token, per-image-token and per-view FLOPs (the numbers the
job's MFU is counted with), the data pipeline's own step count (`Mixture.num_steps`) on a real
synthetic set, and the datasheet table of `jobs.progress`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sphinxx.jobs.cost import gpu_peak, run_cost, training_steps
from sphinxx.jobs.run_memory import flavor_run_config

REPO = Path(__file__).resolve().parents[2]


def _with_steps(cfg, steps: int):
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))


@pytest.mark.parametrize("flavor", ["debug", "tinyllama-1.1b"])
def test_flops_from_model_info_per_token_numbers(flavor: str) -> None:
    """FLOPs = tokens x info's per-token number at seq_len + image positions x the projector's +
    views x the towers' forward, for one square image on the run's canvas (448: 5 views, 1295
    positions: docs/model.md)."""
    from sphinxx.model.info import model_info

    cfg = _with_steps(flavor_run_config(flavor), 10)
    seq = cfg.data.seq_len
    info = model_info(flavor, seq_len=seq)["flops"]
    cost = run_cost(cfg)
    samples = 10 * cfg.train.global_batch
    assert cfg.data.canvas == 448
    expected = (
        samples * seq * info["llm_train_per_token"]
        + samples * 1295 * info["projector_train_per_image_token"]
        + samples * 5 * info["vision_forward_per_view"]
    )
    assert cost["tokens"] == samples * seq
    assert cost["flops"] == pytest.approx(expected, rel=1e-12)
    peak, _ = gpu_peak("H100")
    assert peak == 989e12
    assert cost["gpu_hours"] == pytest.approx(expected / (0.4 * 989e12) / 3600)
    assert cost["memory_per_rank_bytes"] == cost["memory"]["bytes"]["total"] > 0
    assert cost["stage_bytes"] is None


def test_gpu_and_mfu_are_checked() -> None:
    assert gpu_peak("a100")[0] == 312e12
    with pytest.raises(ValueError, match="unknown GPU 'V100'"):
        gpu_peak("V100")
    with pytest.raises(ValueError, match="mfu"):
        run_cost(_with_steps(flavor_run_config("debug"), 1), mfu=1.5)


def test_steps_derive_from_data_as_the_job_derives_them(tmp_path: Path) -> None:
    from sphinxx.jobs.cost import mixture_samples
    from sphinxx.jobs.data.mixture import load_mixture
    from sphinxx.jobs.data.synth import write_synth
    from tests.data.conftest import run_config

    write_synth(str(tmp_path), 40, seed=0)
    cfg = run_config(
        tmp_path, "train.steps=0", "data.epochs=0.7", "data.fraction=0.5", "train.global_batch=3"
    )
    samples = mixture_samples(cfg.data)
    assert training_steps(cfg.train, cfg.data.epochs, samples) == load_mixture(cfg.data).num_steps(3, 0.7)
    assert training_steps(cfg.train, cfg.data.epochs, samples) == math.ceil(math.ceil(0.7 * samples) / 3)
    assert training_steps(cfg.train, cfg.data.epochs, None) is None
    assert training_steps(_with_steps(cfg, 7).train, cfg.data.epochs, None) == 7


def _plan(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinxx.cli",
            "sweep",
            "plan",
            str(REPO / "examples/sweeps/tiny.yaml"),
            *args,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_sweep_plan_cost_on_the_tiny_sweep(tmp_path: Path) -> None:
    """With the demo's data: numbers per point and a total row; --json agrees. Without it: each
    point says why its steps are unknown and the total is unknown, not an error."""
    import json

    from sphinxx.jobs.data.synth import write_synth

    missing = _plan(tmp_path, "--cost")
    assert missing.returncode == 0, missing.stderr
    assert "manifests cannot be read" in missing.stdout
    assert any(line.startswith("total\ttokens unknown") for line in missing.stdout.splitlines())

    write_synth(str(tmp_path / ".demo" / "data"), 240, seed=0)
    text = _plan(tmp_path, "--cost", "--gpu", "A100", "--mfu", "0.5")
    assert text.returncode == 0, text.stderr
    [total] = [line for line in text.stdout.splitlines() if line.startswith("total\t")]
    assert "stage 0 bytes" in total and "GPU-hours unknown" not in total  # local data: nothing staged

    out = json.loads(_plan(tmp_path, "--cost", "--gpu", "A100", "--mfu", "0.5", "--json").stdout)
    costs = [p["cost"] for p in out["points"]]
    assert len(costs) == 4 and all(c["steps_from"] == "data" and c["steps"] > 0 for c in costs)
    assert (
        out["total"]["tokens"] == sum(c["tokens"] for c in costs) == sum(c["steps"] * 4 * 1024 for c in costs)
    )  # global batch 4, seq_len 1024 (examples/sweeps/tiny.yaml)
    assert out["total"]["gpu_hours"] == pytest.approx(sum(c["flops"] for c in costs) / (0.5 * 312e12) / 3600)
    assert f"{out['total']['tokens']:,}" in total
    # Each point's checkpoint: its size, snapshot memory and upload time at the stated bandwidth.
    assert all(c["checkpoint"]["bytes_per_save"] > 0 for c in costs)
    slow = _plan(tmp_path, "--cost", "--upload-gb-per-s", "0.25")
    assert slow.stdout.count("per save at 0.25 GB/s per rank") == 4, slow.stdout


def test_checkpoint_size_matches_the_files_a_save_writes(tmp_path) -> None:
    """`jobs.checkpoint_size` against the bytes the Checkpointer actually commits for the tiny
    debug model (fp32, plain AdamW: weights + m + v, frozen towers left out as when loaded)."""
    import torch

    from sphinxx.jobs.checkpoint import Checkpointer, RunState
    from sphinxx.jobs.checkpoint_size import checkpoint_size, describe
    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.run_memory import run_memory, setup_from_run
    from sphinxx.storage import CheckpointStore
    from tests.jobs._tiny import run_model, tiny_run_config

    cfg = tiny_run_config("debug", 0, 1, tmp_path.as_uri())
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="fp32"))
    model, _ = run_model(cfg, Worker(rank=0, world_size=1))
    model = model.float()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable)
    for p in trainable:
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates m and v
    frozen = tuple(n for n, p in model.named_parameters() if not p.requires_grad)
    store = CheckpointStore(tmp_path.as_uri(), "size")
    Checkpointer(store, model, optimizer, 0, 1, skip_prefixes=frozen).save(RunState(1, {}, {}), {}, {})
    written = sum(f.size for f in store.latest().manifest.files)
    size = checkpoint_size(run_memory(cfg, setup_from_run(cfg)), upload_gb_per_s=2.0)
    assert size["bytes_per_save"] == size["bytes_per_rank"]  # one rank writes everything
    # Beyond the tensors' bytes only the files' own overhead: zip records, names, RNG state, JSON.
    assert 0 <= written - size["bytes_per_save"] < 64 * 1024, (size, written)
    assert size["upload_seconds"] == pytest.approx(size["bytes_per_rank"] / 2e9)
    assert size["snapshot_host_bytes_per_rank"] > size["bytes_per_rank"]
    assert "at 2 GB/s per rank" in describe(size)


def test_mixtral_checkpoint_is_the_issue_figure() -> None:
    """Mixtral-8x7B, bf16, ZeRO-2: 14 bytes per parameter (bf16 weights + fp32 master, m and v),
    about 610 GiB per save (46.7B parameters, its published count)."""
    from sphinxx.jobs.checkpoint_size import GIB, checkpoint_size, describe
    from sphinxx.jobs.run_memory import flavor_run_config, run_memory, setup_from_run

    cfg = flavor_run_config("mixtral-8x7b")
    setup = dataclasses.replace(setup_from_run(cfg), world_size=16, ep_size=8, zero_stage=2, precision="bf16")
    size = checkpoint_size(run_memory(cfg, setup))
    # docs/training.md quotes the line `sphinxx model info mixtral-8x7b --world-size 16 --ep-size 8` prints.
    assert describe(size) in (REPO / "docs" / "training.md").read_text()
    assert 600 < size["bytes_per_save"] / GIB < 620
    # Rank 0 writes its eighth of the experts' weights and a sixteenth of the rest.
    assert size["bytes_per_save"] / 16 < size["bytes_per_rank"] < size["bytes_per_save"] / 8
