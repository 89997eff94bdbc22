"""The engine's side of the run config: the EP size the model was built for."""

from __future__ import annotations

import torch

from tests.jobs._tiny import TINY, TINY_MOE


def test_expert_parallel_size_of_dense_and_moe_models() -> None:
    from sphinxx.jobs.engine import expert_parallel_size
    from sphinxx.model.flavors import get_flavor
    from sphinxx.model.llm import Transformer

    assert expert_parallel_size(torch.nn.Linear(2, 2)) == 1
    assert expert_parallel_size(Transformer(get_flavor("debug", **TINY))) == 1
    assert expert_parallel_size(Transformer(get_flavor("debug-moe", **TINY_MOE, ep_size=2))) == 2


def _engine_up(rank: int, world: int) -> int:
    from sphinxx.jobs.context import Worker
    from tests.jobs._tiny import GLOBAL_BATCH, run_engine, run_model, tiny_run_config

    cfg = tiny_run_config("debug", 0, 1, "file:///tmp/unused")
    worker = Worker(rank=rank, world_size=world)
    model, _ = run_model(cfg, worker)
    engine, _ = run_engine(model, cfg, worker, GLOBAL_BATCH)
    return engine.train_micro_batch_size_per_gpu()


def test_engine_starts_past_a_stale_extension_lock(tmp_path, monkeypatch) -> None:
    """A DeepSpeed op compile killed mid-way leaves its lock in the extensions cache; starting an
    engine on CPU must neither wait on it (it would, forever) nor compile anything."""
    from tests.jobs._dist import run_distributed

    stale = tmp_path / "deepspeed_shm_comm"
    stale.mkdir()
    (stale / "lock").touch()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    [micro_batch] = run_distributed(_engine_up, 1, timeout=240)
    assert micro_batch >= 1
    assert sorted(p.name for p in stale.iterdir()) == ["lock"], "nothing was built"
