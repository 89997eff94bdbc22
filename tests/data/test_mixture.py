"""The mixture stream: proportions follow weight x size, sources drawn without replacement."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from sphinxx.jobs.data.format import Manifest, ShardInfo
from sphinxx.jobs.data.fraction import kept_indices
from sphinxx.jobs.data.mixture import CHUNK, Mixture, MixtureSource


def make_mixture(
    sizes: dict[str, int], weights: dict[str, float] | None = None, fraction: float = 1.0, seed: int = 0
):
    sources = []
    for name, n in sizes.items():
        manifest = Manifest(name, "language", n, (ShardInfo("shards/00000.jsonl", n, 0, ""),))
        kept = len(kept_indices(seed, name, n, fraction))
        sources.append(
            MixtureSource(
                name, f"memory://x/{name}", "language", (weights or {}).get(name, 1.0), manifest, kept
            )
        )
    return Mixture(sources, fraction, seed)


def test_proportions_follow_weight_times_size_within_tolerance() -> None:
    sizes = {"a": 3000, "b": 1000, "c": 500, "d": 7}
    weights = {"a": 1.0, "b": 2.0, "c": 0.5, "d": 3.0}
    mix = make_mixture(sizes, weights)
    n = 10 * CHUNK + 123  # not a whole number of chunks
    sources, _ = mix.locate(np.arange(n))
    counts = Counter(sources.tolist())
    mass = {k: sizes[k] * weights[k] for k in sizes}
    total = sum(mass.values())
    for i, name in enumerate(sizes):
        p = mass[name] / total
        sigma = (n * p * (1 - p)) ** 0.5
        assert abs(counts[i] - n * p) <= 4 * sigma + 1, (name, counts[i], n * p)
    # Any window of a global batch size is close to the proportions too (stratified schedule).
    window = Counter(sources[:256].tolist())
    assert abs(window[0] - 256 * mass["a"] / total) < 20


def test_each_source_is_drawn_without_replacement_within_its_epoch() -> None:
    mix = make_mixture({"a": 300, "b": 101}, fraction=0.6)
    sources, records = mix.locate(np.arange(3 * (mix.samples_per_epoch)))
    for s in range(2):
        drawn = records[sources == s]
        kept = mix.kept(s)
        n = len(kept)
        assert set(drawn.tolist()) <= set(kept.tolist())
        for epoch in range(len(drawn) // n):
            block = drawn[epoch * n : (epoch + 1) * n]
            assert sorted(block.tolist()) == kept.tolist()  # every kept record once per epoch
        # Reshuffled between epochs.
        assert not np.array_equal(drawn[:n], drawn[n : 2 * n])


def test_one_epoch_with_unit_weights_is_one_pass_over_the_fractioned_data() -> None:
    mix = make_mixture({"a": 400, "b": 250, "c": 90}, fraction=0.5)
    sources, records = mix.locate(np.arange(mix.num_samples(1.0)))
    seen = Counter(zip(sources.tolist(), records.tolist(), strict=True))
    assert max(seen.values()) == 1
    # Systematic rounding per chunk: each source is within a couple of records of a full pass.
    for s in range(3):
        assert abs(sum(1 for k in seen if k[0] == s) - mix.sources[s].num_kept) <= 2


def test_the_stream_is_randomly_addressable() -> None:
    mix = make_mixture({"a": 50, "b": 20, "c": 5}, seed=3)
    full_sources, full_records = mix.locate(np.arange(4000))
    probe = np.random.default_rng(0).choice(4000, size=300, replace=False)
    fresh = make_mixture({"a": 50, "b": 20, "c": 5}, seed=3)  # no caches: computed from scratch
    s, r = fresh.locate(probe)
    assert np.array_equal(s, full_sources[probe]) and np.array_equal(r, full_records[probe])


def test_stream_depends_on_the_seed_and_pickles_without_its_caches() -> None:
    import pickle

    a = make_mixture({"a": 50, "b": 20}, seed=1)
    b = make_mixture({"a": 50, "b": 20}, seed=2)
    assert not np.array_equal(a.locate(np.arange(100))[1], b.locate(np.arange(100))[1])
    copy = pickle.loads(pickle.dumps(a))
    assert np.array_equal(copy.locate(np.arange(100))[1], a.locate(np.arange(100))[1])
    assert a.fingerprint() == copy.fingerprint() != b.fingerprint()


def test_summary_reports_counts_per_source_and_domain() -> None:
    mix = make_mixture({"a": 1000, "b": 400}, fraction=0.25)
    summary = mix.summary()
    assert summary["sources"]["a"]["records"] == 1000
    assert summary["sources"]["a"]["kept"] == len(kept_indices(0, "a", 1000, 0.25))
    assert summary["kept"] == mix.samples_per_epoch == sum(s.num_kept for s in mix.sources)
    assert summary["domains"]["language"]["share"] == pytest.approx(1.0)


def test_empty_mixture_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="data.sources is empty"):
        Mixture([], 1.0, 0)
    with pytest.raises(ValueError, match="keeps no record"):
        make_mixture({"tiny": 1}, fraction=1e-12)
