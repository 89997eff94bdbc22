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
