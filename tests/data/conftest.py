"""Shared fixtures: one small synthetic set per test session (written once, read by many tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sphinxx.schema.run import RunConfig, load_config

SYNTH_SIZE = 42  # 6 records per source on average: every domain, every shape of record


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Image processing runs in this process here; on 2 shared cores, extra threads only contend."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sphinxx.jobs.data.synth import write_synth

    root = tmp_path_factory.mktemp("synth") / "set"
    write_synth(str(root), SYNTH_SIZE, seed=0, records_per_shard=4)
    return root


@pytest.fixture(scope="session")
def synth_tokenizer(synth_root: Path) -> Any:
    from sphinxx.jobs.data.template import load_tokenizer

    return load_tokenizer(str(synth_root / "tokenizer"))


def run_config(root: Path | str, *overrides: str) -> RunConfig:
    """The debug preset reading the synthetic set at `root` (a folder or a URI)."""
    root = str(root)
    names = (
        "synth-dialog",
        "synth-math",
        "synth-scenes",
        "synth-captions",
        "synth-charts",
        "synth-ocr",
        "synth-marks",
    )
    domains = ("language", "language", "vision", "vision-language", "vision-language", "ocr", "set-of-mark")
    sources = [
        {"name": n, "uri": f"{root.rstrip('/')}/{n}", "weight": 1.0, "domain": d}
        for n, d in zip(names, domains, strict=True)
    ]
    data = {"data": {"sources": sources, "tokenizer": f"{root.rstrip('/')}/tokenizer", "seq_len": 2048}}
    return load_config(
        preset="debug",
        data=data,
        overrides=["train.global_batch=4", "train.micro_batch=2", "data.num_workers=0", *overrides],
    )
