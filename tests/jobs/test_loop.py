"""The per-worker loop: one step equals the full-batch reference; a run commits its fit inputs.

The reference of the step is plain torch on a copy of the same weights: the whole global batch
in one forward, CE summed over every target token divided by their number, clipping, torch
AdamW. The subject is the job's `train_step` (DeepSpeed engine from `jobs.engine`, 4
micro-batches of accumulation, loss normalised by the global target count).
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from tests.jobs._dist import run_distributed
from tests.jobs._tiny import GLOBAL_BATCH, rank_group, tiny_run_config
from tests.jobs.conftest import tiny_config


def _compare_step(rank: int, world: int) -> float:
    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.loop import train_step
    from sphinxx.model.sphinx import collate
    from tests.jobs._tiny import run_engine, run_model

    cfg = tiny_run_config("debug", 0, 1, "file:///tmp/unused")
    # Adam's first step is ~lr * sign(g): with eps 1e-8, gradient elements near 1e-9 (rounding noise
    # of two equally valid summation orders) could flip a whole lr. A larger eps keeps the
    # comparison about the gradient, which is what this test is for.
    cfg = replace(cfg, train=replace(cfg.train, eps=1e-4))
    worker = Worker(rank=rank, world_size=world)
    model, _ = run_model(cfg, worker)
    reference = copy.deepcopy(model)
    engine, optimizer = run_engine(model, cfg, worker, GLOBAL_BATCH)
    for pg in optimizer.param_groups:
        pg["lr"] = 0.01
    group = rank_group(0, rank, world)  # 4 micro-batches of 1 sample at world size 1
    stats = train_step(engine, model, group, worker)

    # Reference: one batch of all 4 samples, sum of CE / number of targets.
    batch = collate([_sample(mb) for mb in group])
    h, targets, _, _ = reference.assemble(batch)
    hidden, _ = reference.llm.forward_hidden(h)
    mask = targets != -100
    loss = F.cross_entropy(reference.llm.output(hidden[mask]).float(), targets[mask], reduction="sum")
    loss = loss / mask.sum()
    loss.backward()
    params = [p for p in reference.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.train.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=0.01,
        betas=tuple(cfg.train.betas),
        eps=cfg.train.eps,
    )
    opt.step()
    assert stats.loss == pytest.approx(loss.item(), rel=1e-6)
    assert stats.grad_norm == pytest.approx(norm.item(), rel=1e-5)
    worst = 0.0
    for (name, a), b in zip(model.named_parameters(), reference.parameters(), strict=True):
        worst = max(worst, (a.detach() - b.detach()).abs().max().item())
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=0, msg=name)
    return worst


def _sample(mb):
    from sphinxx.model.sphinx import SphinxSample

    batch = mb.batch
    return SphinxSample(tokens=batch.tokens[0], labels=batch.labels[0])


@pytest.mark.slow
def test_accumulated_step_equals_full_batch_reference() -> None:
    worst = run_distributed(_compare_step, 1)[0]
    assert worst < 1e-6


def _train_and_size(rank: int, world: int, cfg, mlflow_run_id: str) -> dict:
    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.loop import train
    from sphinxx.jobs.metrics import scaling_params, trainable_params
    from tests.jobs._tiny import run_model

    worker = Worker(rank=rank, world_size=world, mlflow_run_id=mlflow_run_id)
    final = train(cfg, worker)
    model, _ = run_model(cfg, worker)  # the same model, built again to size it independently
    return {"final": final, "scaling": scaling_params(model), "trainable": trainable_params(model)}


@pytest.mark.slow
def test_every_checkpoint_commits_the_scaling_law_inputs(tmp_path, synth, mlflow_server) -> None:
    """loss, tokens_seen (D), num_params (N) and num_params_total land in each manifest's metrics."""
    from sphinxx.jobs.tracking import create_run
    from sphinxx.schema.run import from_dict
    from sphinxx.storage import CheckpointStore

    storage = (tmp_path / "ckpt").as_uri()
    train = {"steps": 4, "checkpoint_interval": 2}
    raw = tiny_config(synth, "fit-inputs", storage, mlflow_server.tracking_uri, train=train)
    raw["parallel"].update(min_workers=1, max_workers=1)
    cfg = from_dict(raw)
    run_id = create_run(mlflow_server.tracking_uri, "train-e2e", "fit-inputs")
    out = run_distributed(_train_and_size, 1, cfg, run_id)[0]
    store = CheckpointStore(storage, "fit-inputs")
    committed = store.committed()
    assert [c.step for c in committed] == [2, 4]
    tokens = []
    for info in committed:
        metrics = dict(store.get(info.step).manifest.metrics)
        estimate = {"estimate_memory_per_rank_gib", "estimate_flops", "estimate_gpu_hours"}
        stops = {"preemptions", "resizes"}  # planned stops so far, carried across attempts
        assert set(metrics) == {
            "loss",
            "tokens_seen",
            "num_params",
            "num_params_total",
            "mfu",
            *estimate,
            *stops,
        }
        assert (metrics["preemptions"], metrics["resizes"]) == (0, 0)  # an uninterrupted run
        assert metrics["estimate_memory_per_rank_gib"] > 0 and metrics["estimate_gpu_hours"] > 0
        assert metrics["num_params"] == out["scaling"] < metrics["num_params_total"] == out["trainable"]
        tokens.append(metrics["tokens_seen"])
    assert 0 < tokens[0] < tokens[1] == out["final"]["tokens_seen"]  # cumulative, as the run saw them
    assert (out["final"]["num_params"], out["final"]["num_params_total"]) == (
        out["scaling"],
        out["trainable"],
    )
    # Rank 0's progress record (the operator's live status) ends at the last step, written at its commit.
    from sphinxx.schema.progress import read_record

    reading = read_record(store.read_progress(), store.layout.progress, "fit-inputs", 0, time.time(), 300)
    record = reading.record
    assert reading.reason == "Reported", reading.message
    assert (record.step, record.total_steps, record.eta_seconds) == (4, 4, 0.0)
    assert record.tokens_seen == out["final"]["tokens_seen"] and record.tokens_per_s > 0
    assert record.loss == pytest.approx(out["final"]["loss"])
