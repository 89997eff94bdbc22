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
from collections.abc import Iterator
from dataclasses import dataclass

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


HASH_BLOCK = 1 << 20  # records hashed at a time: the transient memory stays at 8 MiB a source


def _blocks(num_records: int) -> Iterator[tuple[int, np.ndarray]]:
    for lo in range(0, num_records, HASH_BLOCK):
        yield lo, np.arange(lo, min(num_records, lo + HASH_BLOCK), dtype=np.uint64)


def _largest(hashes: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k entries of largest (hash, index), in no particular order (ties by index, as a stable
    argsort orders them)."""
    if len(hashes) <= k:
        return hashes, indices
    cut = np.partition(hashes, len(hashes) - k)[len(hashes) - k]
    above = np.flatnonzero(hashes > cut)
    ties = np.flatnonzero(hashes == cut)
    ties = ties[np.argsort(indices[ties], kind="stable")][len(ties) - (k - len(above)) :]
    chosen = np.concatenate([above, ties])
    return hashes[chosen], indices[chosen]


def heldout_indices(seed: int, name: str, num_records: int, requested: int) -> np.ndarray:
    """Sorted indices of the source's held-out split: its `heldout_count` records of LARGEST hash.

    The same hash as the fraction test, from the other end: a record is held out whatever the
    fraction (the split of every point of a sweep is the same), and no fraction's training subset
    contains it (`kept_indices` removes it). Independent of world size and resume history. Ties of
    64-bit hashes go to the larger index. Computed block by block (a running top-k): linear time,
    memory of a block and the split.
    """
    count = heldout_count(num_records, requested)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    top_h, top_i = np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    for _lo, block in _blocks(num_records):
        h, i = _largest(record_hashes(seed, name, block), block.astype(np.int64), count)
        top_h, top_i = _largest(np.concatenate([top_h, h]), np.concatenate([top_i, i]), count)
    return np.sort(top_i)


@dataclass(frozen=True)
class KeptIndex:
    """The kept records of one source as a map rank -> record index, stored compactly.

    At fraction 1 the subset is every record but the held-out split: only that split is stored
    (`excluded`) and rank k maps to k + #(excluded records at or before it). Below 1 the kept
    indices are stored (`explicit`, uint32 when they fit: 4 bytes a kept record).
    """

    num_records: int
    excluded: np.ndarray  # sorted int64 record indices left out (explicit is None)
    explicit: np.ndarray | None = None  # sorted kept record indices

    def __len__(self) -> int:
        if self.explicit is not None:
            return len(self.explicit)
        return self.num_records - len(self.excluded)

    @property
    def nbytes(self) -> int:
        return self.excluded.nbytes + (0 if self.explicit is None else self.explicit.nbytes)

    def take(self, ranks: np.ndarray) -> np.ndarray:
        """Record index of each rank (0 <= rank < len(self)), int64."""
        ranks = np.asarray(ranks, dtype=np.int64)
        if self.explicit is not None:
            return self.explicit[ranks].astype(np.int64)
        if not len(self.excluded):
            return ranks
        # kept before excluded[j] = excluded[j] - j (non-decreasing): rank k skips those <= k.
        gaps = self.excluded - np.arange(len(self.excluded), dtype=np.int64)
        return ranks + np.searchsorted(gaps, ranks, side="right")

    def all(self) -> np.ndarray:
        """Every kept record index, sorted, int64."""
        return self.take(np.arange(len(self), dtype=np.int64))


def kept_index(seed: int, name: str, num_records: int, fraction: float, heldout: int = 0) -> KeptIndex:
    """The records of source `name` inside the `fraction` subset, without its held-out split
    (`heldout` records requested per source, `heldout_indices`), as a compact `KeptIndex`."""
    t = threshold(fraction)
    held = heldout_indices(seed, name, num_records, heldout)
    if t >= 2**64:
        return KeptIndex(num_records, held)
    dtype = np.uint32 if num_records <= 2**32 else np.int64
    parts = [
        (np.flatnonzero(record_hashes(seed, name, block) < np.uint64(t)) + lo).astype(dtype)
        for lo, block in _blocks(num_records)
    ]
    kept = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    if len(held):
        pos = np.minimum(np.searchsorted(kept, held), max(len(kept) - 1, 0))
        hit = (kept[pos] == held) if len(kept) else np.zeros(len(held), dtype=bool)
        kept = np.delete(kept, pos[hit])  # the held-out records the fraction had kept
    return KeptIndex(num_records, np.zeros(0, dtype=np.int64), kept)


def kept_indices(seed: int, name: str, num_records: int, fraction: float, heldout: int = 0) -> np.ndarray:
    """Sorted indices (int64) of the records of source `name` inside the `fraction` subset,
    without its held-out split (`heldout` records requested per source, `heldout_indices`)."""
    return kept_index(seed, name, num_records, fraction, heldout).all()
