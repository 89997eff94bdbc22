"""The Feistel permutation of the mixture's within-source order, and the compact kept index."""

from __future__ import annotations

import numpy as np
import pytest

from sphinxx.jobs.data import fraction
from sphinxx.jobs.data.fraction import KeptIndex, kept_index, record_hashes, threshold
from sphinxx.jobs.data.permutation import ROUNDS, domain_bits, permute, permute_many, round_keys


@pytest.mark.parametrize("n", [*range(1, 40), 64, 65, 255, 256, 257, 1000, 4097, 65537])
def test_permute_is_a_bijection_of_0_to_n(n: int) -> None:
    for key in (0, 1, 2**63 + 12345):
        out = permute(np.arange(n), n, key)
        assert out.dtype == np.int64
        assert np.array_equal(np.sort(out), np.arange(n)), (n, key)


def test_the_domain_is_the_smallest_power_of_two_at_least_n() -> None:
    assert [domain_bits(n) for n in (1, 2, 3, 4, 5, 16, 17, 2**40, 2**40 + 1)] == [
        1,
        1,
        2,
        2,
        3,
        4,
        5,
        40,
        41,
    ]


def test_pointwise_values_equal_the_whole_permutation_and_many_equals_one_by_one() -> None:
    n, key = 10_007, 99
    whole = permute(np.arange(n), n, key)
    probe = np.random.default_rng(0).integers(0, n, 500)
    assert np.array_equal(permute(probe, n, key), whole[probe])  # random access, any batch shape
    sizes = np.array([5, 10_007, 1, 300, 10_007])
    keys = [7, key, 3, 11, 12]
    idx = np.array([4, 17, 0, 299, 10_006])
    together = permute_many(idx, sizes, np.stack([round_keys(k) for k in keys]))
    assert together.tolist() == [
        int(permute(np.array([i]), int(m), k)[0]) for i, m, k in zip(idx, sizes, keys, strict=True)
    ]
    assert round_keys(key).shape == (ROUNDS,)


def test_permutations_look_uniformly_random() -> None:
    # Where 0 goes over 4,000 keys for n = 7: every place about equally often (chi-square, 6 dof).
    n, trials = 7, 4000
    firsts = np.array([permute(np.array([0]), n, key)[0] for key in range(trials)])
    counts = np.bincount(firsts, minlength=n)
    chi2 = (((counts - trials / n) ** 2) / (trials / n)).sum()
    assert chi2 < 30, counts  # p < 1e-4 for a uniform draw
    # A large permutation keeps no trace of the order: rank correlation near 0, few fixed points.
    m = 100_000
    p = permute(np.arange(m), m, 5)
    assert abs(np.corrcoef(np.arange(m), p)[0, 1]) < 0.02
    assert (p == np.arange(m)).sum() < 10
    assert not np.array_equal(p, permute(np.arange(m), m, 6))  # another key, another order


def test_indices_outside_the_domain_are_refused() -> None:
    with pytest.raises(ValueError, match="lie in"):
        permute(np.array([5]), 5, 0)
    with pytest.raises(ValueError, match="n >= 1"):
        permute(np.array([], dtype=np.int64), 0, 0)


def reference_kept(seed: int, name: str, n: int, f: float, requested: int) -> np.ndarray:
    """The definition: hash < threshold, minus the `count` largest (hash, index) records."""
    hashes = record_hashes(seed, name, np.arange(n, dtype=np.uint64))
    keep = hashes < np.uint64(threshold(f)) if f < 1 else np.ones(n, dtype=bool)
    count = fraction.heldout_count(n, requested)
    if count:
        keep[np.argsort(hashes, kind="stable")[n - count :]] = False
    return np.flatnonzero(keep)


@pytest.mark.parametrize(("f", "requested"), [(1.0, 0), (1.0, 37), (0.3, 0), (0.3, 37), (0.999, 500)])
def test_kept_index_maps_ranks_to_the_records_of_the_definition(
    monkeypatch, f: float, requested: int
) -> None:
    monkeypatch.setattr(fraction, "HASH_BLOCK", 1000)  # several blocks: the running top-k merges
    n = 5003
    expected = reference_kept(4, "coco", n, f, requested)
    index = kept_index(4, "coco", n, f, requested)
    assert len(index) == len(expected)
    assert np.array_equal(index.all(), expected)
    ranks = np.random.default_rng(1).integers(0, len(expected), 300)
    assert np.array_equal(index.take(ranks), expected[ranks])
    if f == 1.0:  # only the held-out split is stored
        assert index.explicit is None and index.nbytes == 8 * fraction.heldout_count(n, requested)
    else:
        assert index.explicit is not None and index.explicit.dtype == np.uint32


def test_held_out_ties_go_to_the_larger_index_as_a_stable_sort_orders_them() -> None:
    hashes = np.array([5, 9, 5, 1, 5, 9], dtype=np.uint64)
    idx = np.arange(6, dtype=np.int64)
    for k in range(1, 6):
        _, chosen = fraction._largest(hashes, idx, k)
        assert sorted(chosen.tolist()) == sorted(np.argsort(hashes, kind="stable")[6 - k :].tolist()), k


def test_kept_index_of_a_source_with_only_held_out_gaps_at_the_edges() -> None:
    index = KeptIndex(10, np.array([0, 1, 9], dtype=np.int64))
    assert index.all().tolist() == [2, 3, 4, 5, 6, 7, 8] and len(index) == 7
