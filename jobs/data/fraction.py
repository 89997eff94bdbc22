"""The data-scale axis: a deterministic, nested subset of every source.

Record i of source s is kept iff hash(seed, s, i) / 2^64 < f
(docs/training.md, "Data fraction: nested subsets").
Because the test compares one fixed hash against a threshold that grows with f, the subsets are
nested (the 0.25 subset lies inside the 0.5 subset); because the hash sees only the seed, the
source name and the record index, they do not depend on the world size, the worker count or the
order of the sources in the config. Every source is cut by the same f, so the category
proportions of the mixture stay those of the full data.

The hash is SplitMix64 (Steele et al., 2014) over the record index, keyed by a BLAKE2b digest of
(seed, source name): vectorised in numpy, so 15M records hash in well under a second.
"""

from __future__ import annotations

import hashlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser of (x + golden), elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def source_key(seed: int, name: str) -> int:
    """A 64-bit key of (seed, source name): independent streams per source and per seed."""
    digest = hashlib.blake2b(f"{seed}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def record_hashes(seed: int, name: str, indices: np.ndarray) -> np.ndarray:
    """hash(seed, name, i) for every record index i, as uint64."""
    key = np.uint64(source_key(seed, name))
    return splitmix64(splitmix64(np.asarray(indices, dtype=np.uint64)) ^ key)


def threshold(fraction: float) -> int:
    """The integer t with  keep  <=>  hash < t  (t = 2^64 keeps everything)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data.fraction must be in (0, 1], got {fraction}")
    return min(int(fraction * 2.0**64), 2**64)


def heldout_count(num_records: int, requested: int) -> int:
    """Held-out records of a source: as many as asked, but at most a tenth of the source, so a
    small source keeps nine tenths of its records for training."""
    return max(0, min(requested, num_records // 10))


def heldout_indices(seed: int, name: str, num_records: int, requested: int) -> np.ndarray:
    """Sorted indices of the source's held-out split: its `heldout_count` records of LARGEST hash.

    The same hash as the fraction test, from the other end: a record is held out whatever the
    fraction (the split of every point of a sweep is the same), and no fraction's training subset
    contains it (`kept_indices` removes it). Independent of world size and resume history.
    """
    count = heldout_count(num_records, requested)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    hashes = record_hashes(seed, name, np.arange(num_records, dtype=np.uint64))
    # Ties of 64-bit hashes are broken by index (stable), so the split is fully deterministic.
    order = np.argsort(hashes, kind="stable")
    return np.sort(order[num_records - count :]).astype(np.int64)


def kept_indices(seed: int, name: str, num_records: int, fraction: float, heldout: int = 0) -> np.ndarray:
    """Sorted indices (int64) of the records of source `name` inside the `fraction` subset,
    without its held-out split (`heldout` records requested per source, `heldout_indices`)."""
    t = threshold(fraction)
    count = heldout_count(num_records, heldout)
    if t >= 2**64 and count == 0:
        return np.arange(num_records, dtype=np.int64)
    hashes = record_hashes(seed, name, np.arange(num_records, dtype=np.uint64))
    keep = hashes < np.uint64(t) if t < 2**64 else np.ones(num_records, dtype=bool)
    if count:
        keep[heldout_indices(seed, name, num_records, heldout)] = False
    return np.flatnonzero(keep).astype(np.int64)
