"""Seeded permutations of [0, n) evaluated where needed: a Feistel network with cycle-walking.

Why: the mixture draws the records of a source in a seeded random order per source epoch
(`mixture`). Materialising that order (numpy's `permutation`) costs 8 bytes a record per epoch in
every process that deals keys: at 15M records some 120 MB, twice around an epoch boundary, in
every DataLoader worker of every rank, and the time to shuffle it before the first batch. A keyed
bijection gives perm(i) for just the positions a batch needs: no memory, a few numpy operations
per batch, the same value in any process (docs/training.md, "Mixture").

Construction. The domain is [0, 2^b) with b the bit length of n - 1 (at least 1), so it is
less than 2n. A value x splits into a left part of l bits and a right part of r bits (l = b div
2, r = b - l); each of ROUNDS rounds maps (L, R) -> (R, L xor F_i(R)), with F_i(R) the low l bits
of SplitMix64(R xor k_i) and k_i a round key drawn from the 64-bit key, after which the parts
swap widths (an unbalanced Feistel network): a bijection of [0, 2^b) whatever F is (Luby and
Rackoff, 1988: four rounds of a pseudorandom function give a strong pseudorandom permutation).
Cycle-walking (Black and Rogaway, 2002) applies it again to every value that lands at n or
above until it lands below n, which is a bijection of [0, n); fewer than 2 passes are expected
since 2^b < 2n.
"""

from __future__ import annotations

import numpy as np

from sphinxx.jobs.data.fraction import splitmix64

ROUNDS = 6
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def domain_bits(n: int) -> int:
    """b: the bit length of n - 1, at least 1 (the network permutes [0, 2^b), 2^b >= n)."""
    return max(1, (n - 1).bit_length())


def round_keys(key: int) -> np.ndarray:
    """[ROUNDS] 64-bit round keys from one 64-bit key."""
    return splitmix64(np.uint64(key & 0xFFFFFFFFFFFFFFFF) ^ np.arange(1, ROUNDS + 1, dtype=np.uint64))


def _mix(z: np.ndarray) -> np.ndarray:
    """`fraction.splitmix64` on a uint64 array (arrays wrap silently: no errstate needed)."""
    z = z + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _feistel(x: np.ndarray, bits: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """One pass of the network: x, bits [k] uint64 (each x in [0, 2^bits)), keys [k, ROUNDS]."""
    one = np.uint64(1)
    width_l = bits >> one
    width_r = bits - width_l
    for i in range(ROUNDS):
        left, right = x >> width_r, x & ((one << width_r) - one)
        x = (right << width_l) | (left ^ (_mix(right ^ keys[:, i]) & ((one << width_l) - one)))
        width_l, width_r = width_r, width_l
    return x


def permute_many(indices: np.ndarray, n: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """perm_{keys[j]}(indices[j]) over [0, n[j]) for every j, in one vectorised pass: int64.

    `n` [k] int64 (>= 1, indices[j] < n[j]), `keys` [k, ROUNDS] uint64 (`round_keys` rows): many
    permutations of different sizes and keys at once (one per source of a global batch)."""
    idx = np.asarray(indices, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    if idx.size and (n.min() < 1 or idx.min() < 0 or (idx >= n).any()):
        raise ValueError("every index must lie in [0, n) with n >= 1")
    bits = np.frexp(np.maximum(n - 1, 1).astype(np.float64))[1].astype(np.uint64)  # n < 2^53
    limit = n.astype(np.uint64)
    out = _feistel(idx.astype(np.uint64), bits, keys)
    walk = np.flatnonzero(out >= limit)
    while walk.size:  # cycle-walking: only the values that left [0, n) go round again
        out[walk] = _feistel(out[walk], bits[walk], keys[walk])
        walk = walk[out[walk] >= limit[walk]]
    return out.astype(np.int64)


def permute(indices: np.ndarray, n: int, key: int) -> np.ndarray:
    """perm_key(i) for every i of `indices` (each in [0, n)): a bijection of [0, n), int64."""
    if n < 1:
        raise ValueError(f"a permutation needs n >= 1, got {n}")
    idx = np.asarray(indices, dtype=np.int64)
    keys = np.broadcast_to(round_keys(key), (idx.size, ROUNDS))
    return permute_many(idx, np.full(idx.size, n, dtype=np.int64), keys)
