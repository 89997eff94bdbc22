"""Seeded permutations of [0, n) evaluated where needed: a Feistel network with cycle-walking.

Why: the mixture draws the records of a source in a seeded random order per source epoch
(`mixture`). Materialising that order (numpy's `permutation`) costs 8 bytes a record per epoch in
every process that deals keys: at 15M records some 120 MB, twice around an epoch boundary, in
every DataLoader worker of every rank, and the time to shuffle it before the first batch. A keyed
bijection gives perm(i) for just the positions a batch needs: no memory, a few numpy operations
per batch, the same value in any process (docs/training.md, "Mixture").

Construction. The domain is [0, 4^h) with h the smallest width such that 4^h >= n (h >= 1), so
it is less than 4n. A value x splits into two h-bit halves (L, R); each of ROUNDS rounds maps
(L, R) -> (R, L xor F_r(R)), with F_r(R) the low h bits of SplitMix64(R xor k_r) and k_r a
round key drawn from the 64-bit key: a bijection of [0, 4^h) whatever F is (a Feistel network;
Luby and Rackoff, 1988: four rounds of a pseudorandom function give a strong pseudorandom
permutation). Cycle-walking (Black and Rogaway, 2002) applies it again to every value that
lands at n or above until it lands below n, which is a bijection of [0, n); fewer than 4 passes
are expected since 4^h < 4n.
"""

from __future__ import annotations

import numpy as np

from sphinxx.jobs.data.fraction import splitmix64

ROUNDS = 6
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def half_width(n: int) -> int:
    """h: the half width in bits, the smallest h >= 1 with 4^h >= n."""
    return max(1, ((n - 1).bit_length() + 1) // 2)


def round_keys(key: int) -> np.ndarray:
    """[ROUNDS] 64-bit round keys from one 64-bit key."""
    return splitmix64(np.uint64(key & 0xFFFFFFFFFFFFFFFF) ^ np.arange(1, ROUNDS + 1, dtype=np.uint64))


def _mix(z: np.ndarray) -> np.ndarray:
    """`fraction.splitmix64` on a uint64 array (arrays wrap silently: no errstate needed)."""
    z = z + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _feistel(x: np.ndarray, half: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """One pass of the network: x, half [k] uint64 (each x in [0, 4^half)), keys [k, ROUNDS]."""
    mask = (np.uint64(1) << half) - np.uint64(1)
    left, right = x >> half, x & mask
    for r in range(ROUNDS):
        left, right = right, left ^ (_mix(right ^ keys[:, r]) & mask)
    return (left << half) | right


def permute_many(indices: np.ndarray, n: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """perm_{keys[j]}(indices[j]) over [0, n[j]) for every j, in one vectorised pass: int64.

    `n` [k] int64 (>= 1, indices[j] < n[j]), `keys` [k, ROUNDS] uint64 (`round_keys` rows): many
    permutations of different sizes and keys at once (one per source of a global batch)."""
    idx = np.asarray(indices, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    if idx.size and (n.min() < 1 or idx.min() < 0 or (idx >= n).any()):
        raise ValueError("every index must lie in [0, n) with n >= 1")
    bits = np.frexp(np.maximum(n - 1, 1).astype(np.float64))[1]  # bit length of n - 1 (n < 2^53)
    half = np.maximum(1, (bits + 1) // 2).astype(np.uint64)
    limit = n.astype(np.uint64)
    out = _feistel(idx.astype(np.uint64), half, keys)
    walk = np.flatnonzero(out >= limit)
    while walk.size:  # cycle-walking: only the values that left [0, n) go round again
        out[walk] = _feistel(out[walk], half[walk], keys[walk])
        walk = walk[out[walk] >= limit[walk]]
    return out.astype(np.int64)


def permute(indices: np.ndarray, n: int, key: int) -> np.ndarray:
    """perm_key(i) for every i of `indices` (each in [0, n)): a bijection of [0, n), int64."""
    if n < 1:
        raise ValueError(f"a permutation needs n >= 1, got {n}")
    idx = np.asarray(indices, dtype=np.int64)
    keys = np.broadcast_to(round_keys(key), (idx.size, ROUNDS))
    return permute_many(idx, np.full(idx.size, n, dtype=np.int64), keys)
