"""Elastic resume: global batches dealt over any world size; the state is the next global batch."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sphinxx.jobs.data.sampler import ElasticSampler, accum_steps, check_state
from tests.data.conftest import run_config
from tests.data.test_mixture import make_mixture
from tests.jobs._tiny import run_data


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_and_micro_steps_cover_each_global_batch_exactly(world: int) -> None:
    mix = make_mixture({"a": 100, "b": 30})
    keys = [k for r in range(world) for k in ElasticSampler(mix, 16, 2, r, world, start_step=3, stop_step=5)]
    for step in (3, 4):
        positions = sorted(p for k in keys if k.step == step for p in k.positions)
        assert positions == list(range(16 * step, 16 * (step + 1)))
    sources, records = mix.locate(np.arange(48, 80))
    by_position = {p: (s, r) for k in keys for p, s, r in zip(k.positions, k.sources, k.records, strict=True)}
    assert [by_position[p] for p in range(48, 80)] == list(
        zip(sources.tolist(), records.tolist(), strict=True)
    )


@pytest.mark.parametrize(("world", "micro"), [(3, 4), (4, 1), (7, 2)])
def test_world_sizes_that_do_not_divide_the_batch_get_even_slots(world: int, micro: int) -> None:
    mix = make_mixture({"a": 100, "b": 30})
    samplers = [ElasticSampler(mix, 10, micro, r, world, start_step=2, stop_step=3) for r in range(world)]
    assert samplers[0].accum_steps == accum_steps(10, micro, world) == -(-10 // (micro * world))
    keys = [k for s in samplers for k in s]
    assert sorted(p for k in keys for p in k.positions) == list(range(20, 30))
    sizes = [len(k.positions) for k in keys]
    assert max(sizes) <= micro and max(sizes) - min(sizes) <= 1


def seen(stream, max_steps: int | None = None) -> list[tuple[int, int, int]]:
    """(position, source, record) of every row a rank trained on, stopping after max_steps steps."""
    rows = []
    for group in stream.iter_steps():
        for mb in group:
            rows += [(p, s, r) for p, (s, r) in zip(mb.positions, mb.samples, strict=True)]
        if max_steps is not None and group[0].step + 1 - stream.sampler.start_step >= max_steps:
            break
    return rows


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2), (2, 3)])
def test_resume_at_another_world_size_sees_exactly_the_unseen_samples(
    synth_root, synth_tokenizer, before, after
):
    # canvas 224: two views per image keeps this end-to-end test quick on a shared CPU.
    cfg = run_config(synth_root, "train.global_batch=4", "train.micro_batch=1", "data.canvas=224")
    total_steps, stop_at = 4, 2
    baseline = seen(run_data(cfg, 0, 1, tokenizer=synth_tokenizer, num_steps=total_steps))
    assert len(baseline) == 4 * total_steps

    first = [
        run_data(cfg, r, before, tokenizer=synth_tokenizer, num_steps=total_steps) for r in range(before)
    ]
    rows = [row for stream in first for row in seen(stream, max_steps=stop_at)]
    states = [stream.state_dict() for stream in first]
    assert all(s["sampler"]["next_step"] == stop_at for s in states)

    second = [run_data(cfg, r, after, tokenizer=synth_tokenizer, num_steps=total_steps) for r in range(after)]
    for stream in second:
        stream.load_state_dict(states[0])
        rows += seen(stream)
    positions = [p for p, _, _ in rows]
    assert len(positions) == len(set(positions))  # no sample twice
    assert sorted(rows) == sorted(baseline)  # nothing skipped, same records at the same positions


def test_state_from_another_global_batch_or_mixture_is_refused(synth_root, synth_tokenizer) -> None:
    cfg = run_config(synth_root)
    stream = run_data(cfg, 0, 1, tokenizer=synth_tokenizer, num_steps=1)
    state = stream.state_dict()["sampler"]
    with pytest.raises(ValueError, match="global_batch changed"):
        check_state(state, stream.mixture, 8)
    other = run_data(
        run_config(synth_root, "data.fraction=0.5"), 0, 1, tokenizer=synth_tokenizer, num_steps=1
    )
    with pytest.raises(ValueError, match="data mixture changed"):
        other.load_state_dict(stream.state_dict())
    other.load_state_dict(stream.state_dict(), strict=False)


@pytest.mark.slow
def test_worker_processes_do_not_change_the_stream(synth_root, synth_tokenizer) -> None:
    cfg = run_config(synth_root)
    in_process = list(run_data(cfg, 0, 1, tokenizer=synth_tokenizer, num_steps=4))
    cfg = replace(cfg, data=replace(cfg.data, num_workers=2))
    workers = list(run_data(cfg, 0, 1, tokenizer=synth_tokenizer, num_steps=4))
    assert [(m.step, m.micro, m.samples) for m in workers] == [
        (m.step, m.micro, m.samples) for m in in_process
    ]
    for a, b in zip(in_process, workers, strict=True):
        for name, value in a.batch.__dict__.items():
            assert value.equal(getattr(b.batch, name)), name


def test_a_checkpoint_of_the_materialised_order_resumes_in_that_order(synth_root, synth_tokenizer) -> None:
    """A stream saved before the FEISTEL order (its fingerprint is the old formula) goes on exactly."""
    import hashlib
    import json

    from sphinxx.jobs.data.mixture import CHUNK, FEISTEL, MATERIALISED

    cfg = run_config(synth_root, "train.global_batch=4", "train.micro_batch=2")
    old = run_data(cfg, 0, 1, tokenizer=synth_tokenizer, num_steps=6)
    old.mixture.set_order(MATERIALISED)
    old.next_step = 3
    state = old.state_dict()
    parts = [[s.name, s.manifest.num_records, s.weight, s.num_kept] for s in old.mixture.sources]
    blob = {"sources": parts, "fraction": 1.0, "seed": 0, "chunk": CHUNK, "v": 2}  # before FEISTEL
    assert state["sampler"]["fingerprint"] == hashlib.sha256(json.dumps(blob).encode()).hexdigest()[:16]
    resumed = run_data(cfg, 0, 2, tokenizer=synth_tokenizer, num_steps=6)  # at another world size
    assert (
        resumed.mixture.order == FEISTEL and resumed.mixture.fingerprint() != state["sampler"]["fingerprint"]
    )
    resumed.load_state_dict(state)
    assert resumed.mixture.order == MATERIALISED and resumed.next_step == 3
    for step in (3, 4, 5):
        expected = [old.sampler.key(step, m) for m in range(old.accum_steps)]
        got = [resumed.sampler.key(step, 0)] + [ElasticSampler(resumed.mixture, 4, 2, 1, 2).key(step, 0)]
        assert key_rows(got) == key_rows(expected)
    # The two orders are different streams over the same records.
    fresh = run_data(cfg, 0, 1, tokenizer=synth_tokenizer, num_steps=6).mixture
    positions = np.arange(3 * fresh.samples_per_epoch)
    (s_old, r_old), (s_new, r_new) = old.mixture.locate(positions), fresh.locate(positions)
    assert np.array_equal(s_old, s_new) and not np.array_equal(r_old, r_new)
    assert sorted(zip(s_old.tolist(), r_old.tolist(), strict=True)) == sorted(
        zip(s_new.tolist(), r_new.tolist(), strict=True)
    )


def key_rows(keys) -> list[tuple[int, int, int]]:
    return sorted(t for k in keys for t in zip(k.positions, k.sources, k.records, strict=True))
