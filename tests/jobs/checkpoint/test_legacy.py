"""A run written by an older sphinxx still loads and resumes.

`tests/fixtures/legacy-run/` is one whole run folder (`config.yaml`, `run.json`, a committed
checkpoint at step 2 and Ray's pointer) written by the code at commit ba592fb, before the
vocabulary and the sweep core moved to the package root, by the real job:

    sphinxx data synth DATA --size 140          # the `synth` fixture's data set (seed 0)
    python -m sphinxx.jobs.train --config CFG   # debug flavor, 1 layer x 32 wide, 1 worker,
                                                # train.steps=2, checkpoint_interval=2,
                                                # storage file:///work/scratch/legacy/store

Its paths name the machine it was written on; the test moves the data and store prefixes to
this run's temporary folders (the one edit a user copying a run would make) and changes nothing
else.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.jobs._dist import run_distributed

LEGACY = Path(__file__).resolve().parents[2] / "fixtures" / "legacy-run"
WRITTEN_DATA = "file:///work/scratch/legacy/data"
WRITTEN_STORE = "file:///work/scratch/legacy/store"


def _subset(stored, resolved, path: str = "") -> None:
    """Every value the old code stored resolves to the same value now (new fields may be added)."""
    if isinstance(stored, dict):
        assert isinstance(resolved, dict), path
        for key, value in stored.items():
            assert key in resolved, f"{path}.{key} is no longer a field"
            _subset(value, resolved[key], f"{path}.{key}")
    elif isinstance(stored, list):
        assert isinstance(resolved, list) and len(resolved) == len(stored), path
        for i, (a, b) in enumerate(zip(stored, resolved, strict=True)):
            _subset(a, b, f"{path}[{i}]")
    else:
        assert stored == resolved, f"{path}: stored {stored!r}, resolves to {resolved!r}"


def test_stored_run_config_loads_unchanged() -> None:
    from sphinxx.schema.run import load_config, to_dict

    stored = yaml.safe_load((LEGACY / "config.yaml").read_text())
    cfg = load_config(data=stored)
    _subset(stored, to_dict(cfg))
    assert cfg.run_id == "legacy-run" and cfg.model.overrides.dim == 32


def _copy_run(tmp_path: Path, synth) -> tuple[str, Path]:
    store = tmp_path / "store"
    shutil.copytree(LEGACY, store / "legacy-run")
    text = (LEGACY / "config.yaml").read_text()
    text = text.replace(WRITTEN_DATA, synth.root.rstrip("/")).replace(WRITTEN_STORE, store.as_uri())
    config = tmp_path / "config.yaml"
    config.write_text(text)
    return store.as_uri(), config


def _resume(rank: int, world: int, config: str):
    """Load the legacy step bit for bit, then let the train loop resume it to step 4."""
    from sphinxx.jobs.checkpoint import Checkpointer
    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.loop import train
    from sphinxx.jobs.train import parse_args, read_config
    from sphinxx.storage import CheckpointStore
    from tests.jobs._tiny import run_engine, run_model

    cfg = read_config(parse_args(["--config", config, "train.steps=4"]))
    worker = Worker(rank=rank, world_size=world, attempt=2)
    model, _ = run_model(cfg, worker)
    _engine, optimizer = run_engine(model, cfg, worker, accum=2)
    store = CheckpointStore(cfg.storage.uri, cfg.run_id)
    restored = Checkpointer(store, model, optimizer, rank, world).restore()
    loaded = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = train(cfg, worker)
    return restored.state.step, restored.state.tokens_seen, loaded, result


@pytest.mark.slow
def test_legacy_checkpoint_restores_and_resumes(tmp_path, synth) -> None:
    from sphinxx.storage import CheckpointStore

    storage, config = _copy_run(tmp_path, synth)
    [(step, tokens, loaded, result)] = run_distributed(_resume, 1, str(config))
    assert (step, tokens) == (2, 1692)  # the run state the old code committed
    written = torch.load(
        LEGACY / "checkpoints/step-000000002/model/dense-rank-00000.pt", map_location="cpu", weights_only=True
    )
    assert written.keys() <= loaded.keys()
    for name, tensor in written.items():
        assert torch.equal(loaded[name], tensor), name
    assert result["step"] == 4 and result["tokens_seen"] > tokens
    committed = [c.step for c in CheckpointStore(storage, "legacy-run").committed()]
    assert committed == [2, 4]  # the old checkpoint kept, the resumed run's final one beside it
