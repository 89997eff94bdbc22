"""The data-fraction subset: a fixed hash against a threshold, so subsets are nested."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sphinxx.jobs.data.fraction import kept_indices, record_hashes, splitmix64

MASK = (1 << 64) - 1


def reference_splitmix64(x: int) -> int:
    """SplitMix64 as published (Vigna's splitmix64.c), in plain Python integers."""
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def reference_hash(seed: int, name: str, index: int) -> int:
    key = int.from_bytes(hashlib.blake2b(f"{seed}\x00{name}".encode(), digest_size=8).digest(), "little")
    return reference_splitmix64(reference_splitmix64(index) ^ key)


def test_splitmix64_matches_the_reference_implementation() -> None:
    xs = [0, 1, 2, 12345, MASK, 1 << 63]
    ours = splitmix64(np.array(xs, dtype=np.uint64)).tolist()
    assert ours == [reference_splitmix64(x) for x in xs]
    # First output of the published generator seeded with 0 (state advanced once by the golden gamma).
    assert reference_splitmix64(0) == 0xE220A8397B1DCDAF


def test_kept_set_is_the_records_whose_hash_is_below_f_times_2_to_64() -> None:
    n, f = 2000, 0.3
    expected = [i for i in range(n) if reference_hash(7, "src", i) / 2**64 < f]
    assert kept_indices(7, "src", n, f).tolist() == expected
    assert record_hashes(7, "src", np.arange(3)).tolist() == [reference_hash(7, "src", i) for i in range(3)]


def test_fractions_are_nested_and_sized_like_f() -> None:
    n = 20000
    previous: set[int] = set()
    for f in (0.05, 0.25, 0.5, 0.75, 1.0):
        kept = set(kept_indices(3, "coco", n, f).tolist())
        assert previous <= kept
        sigma = (n * f * (1 - f)) ** 0.5
        assert abs(len(kept) - n * f) <= 5 * sigma + 1
        previous = kept
    assert previous == set(range(n))


def test_subsets_depend_on_seed_and_source_but_not_on_anything_else() -> None:
    a = kept_indices(0, "a", 5000, 0.5)
    assert not np.array_equal(a, kept_indices(0, "b", 5000, 0.5))
    assert not np.array_equal(a, kept_indices(1, "a", 5000, 0.5))
    # A larger source keeps the same records among its first 5000 (the hash sees only the index).
    assert np.array_equal(a, kept_indices(0, "a", 9000, 0.5)[: len(a)])


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_fraction_outside_0_1_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="data.fraction"):
        kept_indices(0, "a", 10, bad)


# -- the held-out split --------------------------------------------------------------------------


def test_heldout_split_is_the_top_hashes_and_disjoint_from_every_fraction() -> None:
    from sphinxx.jobs.data.fraction import heldout_count, heldout_indices, kept_indices, record_hashes

    n, requested = 5000, 120
    held = heldout_indices(7, "vqa", n, requested)
    assert len(held) == heldout_count(n, requested) == 120 and np.all(np.diff(held) > 0)
    hashes = record_hashes(7, "vqa", np.arange(n, dtype=np.uint64))
    rest = np.setdiff1d(np.arange(n), held)
    assert hashes[held].min() > hashes[rest].max()  # an independent definition: the largest hashes
    previous = np.zeros(0, dtype=np.int64)
    for fraction in (0.1, 0.25, 0.5, 0.999, 1.0):
        kept = kept_indices(7, "vqa", n, fraction, requested)
        assert not np.intersect1d(kept, held).size  # no training subset holds a held-out record
        assert np.isin(previous, kept).all()  # still nested
        without = kept_indices(7, "vqa", n, fraction)  # the same subset minus the split, nothing else
        assert np.array_equal(kept, np.setdiff1d(without, held))
        previous = kept
    assert len(kept_indices(7, "vqa", n, 1.0, requested)) == n - 120


def test_heldout_split_depends_on_seed_and_source_only_and_is_capped() -> None:
    from sphinxx.jobs.data.fraction import heldout_count, heldout_indices

    a = heldout_indices(0, "ocr", 1000, 50)
    assert np.array_equal(a, heldout_indices(0, "ocr", 1000, 50))
    assert not np.array_equal(a, heldout_indices(1, "ocr", 1000, 50))
    assert not np.array_equal(a, heldout_indices(0, "caption", 1000, 50))
    assert np.isin(heldout_indices(0, "ocr", 1000, 20), a).all()  # a smaller split lies inside a larger
    assert heldout_count(1000, 500) == 100 and heldout_count(9, 5) == 0 and heldout_count(1000, 0) == 0
    assert len(heldout_indices(0, "ocr", 9, 5)) == 0
