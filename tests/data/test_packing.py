"""Packing a micro-batch: first-fit rows on hand cases; packed streams see exactly the samples of the
padded stream, on resume and across world sizes, and pack the same micro-batch the same way."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from sphinxx.jobs.data.packing import PACKED, PADDED, assign_rows, computed_positions, first_fit, pack_rows
from tests.data.conftest import run_config
from tests.data.test_sampler import seen
from tests.jobs._tiny import run_data


def _fills(lengths: list[int], rows: list[int]) -> list[int]:
    fill = [0] * (max(rows) + 1)
    for n, r in zip(lengths, rows, strict=True):
        fill[r] += n
    return fill


def _ffd_computed(lengths: list[int], capacity: int) -> int:
    """Positions plain first-fit decreasing at full capacity computes (an independent reference)."""
    fill: list[int] = []
    for n in sorted(lengths, reverse=True):
        for r in range(len(fill)):
            if fill[r] + n <= capacity:
                fill[r] += n
                break
        else:
            fill.append(n)
    return len(fill) * max(fill)


def test_first_fit_places_each_sample_in_the_first_row_with_room() -> None:
    assert first_fit([0, 1, 2, 3], [5, 4, 3, 2], 8, 4) == [0, 1, 0, 1]
    assert first_fit([0, 1, 2], [5, 4, 3], 8, 1) is None  # needs two rows


def test_pack_rows_by_hand() -> None:
    # 24 positions need ceil(24 / 16) = 2 rows. No split of {10, 6, 4, 3, 1} gives 12 + 12 (10 would
    # need a 2), so 13 is the narrowest width: first-fit decreasing gives {10, 3} and {6, 4, 1}.
    lengths = [6, 10, 3, 4, 1]
    rows = pack_rows(lengths, 16)
    assert rows == [0, 1, 1, 0, 0]  # rows numbered by their first sample in stream order
    assert _fills(lengths, rows) == [11, 13]  # shrunk from 16 to 13
    assert computed_positions(lengths, rows) == 26  # against 5 x 10 = 50 padded
    assert computed_positions(lengths, list(range(5))) == 50
    assert pack_rows([7], 7) == [0]
    assert pack_rows([], 8) == []
    with pytest.raises(ValueError, match="data.seq_len"):
        pack_rows([9], 8)


def test_pack_rows_never_computes_more_than_padding_and_respects_capacity() -> None:
    rng = random.Random(0)
    for _ in range(200):
        capacity = rng.choice([64, 300, 2048])
        lengths = [rng.randint(1, capacity) for _ in range(rng.randint(1, 24))]
        rows = pack_rows(lengths, capacity)
        fills = _fills(lengths, rows)
        assert min(fills) > 0 and max(fills) <= capacity
        padded = computed_positions(lengths, list(range(len(lengths))))
        computed = computed_positions(lengths, rows)
        assert sum(lengths) <= computed <= min(padded, _ffd_computed(lengths, capacity))
        assert rows == pack_rows(lengths, capacity)  # a pure function of the window


def test_modes() -> None:
    assert assign_rows([3, 5], 8, PADDED) == [0, 1]
    assert assign_rows([3, 5], 8, PACKED) == [0, 0]
    with pytest.raises(ValueError, match="data.packing"):
        assign_rows([3], 8, "grouped")


def _rows_of(stream, max_steps: int | None = None) -> list[tuple]:
    """(step, micro, sample rows, decoder rows) of every micro-batch a rank built."""
    out = []
    for group in stream.iter_steps():
        out += [(mb.step, mb.micro, tuple(mb.samples), tuple(mb.batch.rows.tolist())) for mb in group]
        if max_steps is not None and group[0].step + 1 - stream.sampler.start_step >= max_steps:
            break
    return out


def test_packed_stream_sees_the_padded_streams_samples_with_less_padding(synth_root, synth_tokenizer):
    common = ("train.global_batch=8", "train.micro_batch=4", "data.canvas=224", "data.seq_len=1024")
    packed = run_data(run_config(synth_root, *common), 0, 1, tokenizer=synth_tokenizer, num_steps=2)
    padded = run_config(synth_root, *common, "data.packing=padded")
    assert packed.packing == PACKED  # the default
    padded_stream = run_data(padded, 0, 1, tokenizer=synth_tokenizer, num_steps=2)
    a, b = list(packed), list(padded_stream)
    assert [(m.step, m.micro, m.samples, m.num_targets) for m in a] == [
        (m.step, m.micro, m.samples, m.num_targets) for m in b
    ]
    assert any(m.batch.rows.max() + 1 < m.num_samples for m in a)  # something was packed
    assert sum(m.computed_positions for m in a) < sum(m.computed_positions for m in b)
    assert packed.stats.metrics()["data/padded_ratio"] < padded_stream.stats.metrics()["data/padded_ratio"]


@pytest.mark.parametrize(("before", "after"), [(1, 2), (2, 1)])
def test_packed_resume_at_another_world_size_sees_exactly_the_unseen_samples(
    synth_root, synth_tokenizer, before, after
):
    cfg = run_config(synth_root, "train.global_batch=8", "train.micro_batch=2", "data.canvas=224")
    total_steps, stop_at = 3, 1
    baseline = seen(run_data(cfg, 0, 1, tokenizer=synth_tokenizer, num_steps=total_steps))
    first = [
        run_data(cfg, r, before, tokenizer=synth_tokenizer, num_steps=total_steps) for r in range(before)
    ]
    rows = [row for stream in first for row in seen(stream, max_steps=stop_at)]
    state = first[0].state_dict()
    for r in range(after):
        stream = run_data(cfg, r, after, tokenizer=synth_tokenizer, num_steps=total_steps)
        stream.load_state_dict(state)
        rows += seen(stream)
    assert len(rows) == len({p for p, _, _ in rows})  # no sample twice
    assert sorted(rows) == sorted(baseline)  # nothing skipped, the same records at the same positions


def test_packed_resume_at_the_same_world_size_packs_the_same_rows(synth_root, synth_tokenizer):
    cfg = run_config(synth_root, "train.global_batch=8", "train.micro_batch=4", "data.canvas=224")
    whole = _rows_of(run_data(cfg, 0, 1, tokenizer=synth_tokenizer, num_steps=3))
    first = run_data(cfg, 0, 1, tokenizer=synth_tokenizer, num_steps=3)
    head = _rows_of(first, max_steps=1)
    resumed = run_data(cfg, 0, 1, tokenizer=synth_tokenizer, num_steps=3)
    resumed.load_state_dict(first.state_dict())
    assert head + _rows_of(resumed) == whole


@pytest.mark.slow  # a subprocess that writes a synthetic set and builds the debug model (~25 s)
def test_bench_smallest_setting() -> None:
    """bench/packing.py at its smallest setting, so it cannot rot: both layouts read the same samples,
    packing computes fewer positions, and the loss of the two layouts agrees."""
    root = Path(__file__).resolve().parents[2]
    argv = ["--size", "7", "--steps", "1", "--micro-batch", "3", "--seq-len", "1024", "--canvas", "224"]
    proc = subprocess.run(
        [sys.executable, str(root / "bench" / "packing.py"), *argv],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    padding = {r["mode"]: r for r in lines if r["kind"] == "padding"}
    speed = {r["mode"]: r for r in lines if r["kind"] == "throughput"}
    (ratio,) = [r for r in lines if r["kind"] == "ratio"]
    assert padding["packed"]["samples"] == padding["padded"]["samples"] == 3
    assert padding["packed"]["real_positions"] == padding["padded"]["real_positions"]
    assert padding["packed"]["computed_positions"] <= padding["padded"]["computed_positions"]
    assert speed["packed"]["ce_sum"] == pytest.approx(speed["padded"]["ce_sum"], rel=1e-5)
    assert ratio["baseline"] == "padded" and ratio["tokens_per_s"] > 0
