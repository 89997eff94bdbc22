"""The mixture: the sources of a run config, weighted into one deterministic sample stream.

Stream position j (0, 1, 2, ...) names one sample; global batch i is positions [i*G, (i+1)*G).
The stream depends only on the sources (names, record counts, weights), `data.fraction` and
`data.seed`, never on the world size, so any number of ranks can continue it (see `sampler`).

Weights [D]. Per epoch, source s contributes c_s = round(weight_s x kept_s) samples (at least
one), so weight is a repeat factor: with every weight 1 an epoch is exactly one pass over the
fractioned mixture in its natural proportions (the SPHINX-X recipe: one stage over all data),
weight 2 shows a source twice per epoch, 0.5 half of it (the next epoch continues with the
unseen half). An epoch has N = sum_s c_s samples.

Which source position j draws from: epoch e = j div N is a uniformly random arrangement of the
multiset {s: c_s}. It is drawn chunk by chunk (CHUNK positions): chunk counts come from a
multivariate hypergeometric draw over what the epoch has left, then a seeded shuffle orders the
chunk. That is exactly a uniform random permutation, and it makes the number of draws of s
before any position a cheap prefix sum: the stream is randomly addressable.

Within a source: the k-th draw of source s is record kept_s[perm_{s,e'}[k mod n_s]] with
e' = k div n_s, where perm_{s,e'} is a seeded permutation per (source, source epoch). Each
source is therefore consumed without replacement within its epoch, and reshuffled for the next.
The permutation is a keyed Feistel bijection evaluated at just the draws a batch needs
(`permutation`, order FEISTEL): nothing of size n_s is shuffled or held. Streams of checkpoints
written before it used numpy's materialised permutation (order MATERIALISED, a fingerprint of
its own): a resume from one continues that order (`adopt_order`). kept_s is a compact
`fraction.KeptIndex` (nothing stored at fraction 1 but the held-out split).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sphinxx.jobs.data.format import Manifest, read_manifest
from sphinxx.jobs.data.fraction import KeptIndex, heldout_count, heldout_indices, kept_index, source_key
from sphinxx.jobs.data.permutation import ROUNDS, permute_many, round_keys
from sphinxx.storage import uri as uri_mod

CHUNK = 1024  # positions per chunk of the source schedule
FEISTEL = "feistel"  # within-source order: a keyed bijection evaluated pointwise (the default)
MATERIALISED = "materialised"  # the order of streams before it: numpy permutations held in memory
ORDERS = (FEISTEL, MATERIALISED)


@dataclass(frozen=True)
class MixtureSource:
    """One source of the mixture with its manifest (read once, in the main process)."""

    name: str
    uri: str  # normalised source root
    domain: str
    weight: float
    manifest: Manifest
    num_kept: int  # records inside the data fraction


class Mixture:
    """Deterministic, randomly addressable stream of (source, record) pairs."""

    def __init__(
        self,
        sources: list[MixtureSource],
        fraction: float,
        seed: int,
        heldout: int = 0,
        order: str = FEISTEL,
        kept: dict[int, KeptIndex] | None = None,
    ):
        """`kept`: the sources' kept indexes when the caller has them (`load_mixture`), else lazy."""
        if not sources:
            raise ValueError(
                "data.sources is empty: list at least one source (sphinxx data synth makes some)"
            )
        self.sources = tuple(sources)
        self.fraction, self.seed, self.heldout = fraction, seed, heldout
        per_epoch = [max(1, round(s.weight * s.num_kept)) if s.num_kept else 0 for s in sources]
        self.per_epoch = np.array(per_epoch, dtype=np.int64)  # c_s: draws of each source per epoch
        if self.per_epoch.sum() == 0:
            raise ValueError(
                f"data.fraction {fraction} keeps no record of any source; raise the fraction or add data"
            )
        self.samples_per_epoch = int(self.per_epoch.sum())
        self.probs = self.per_epoch / self.samples_per_epoch
        self.num_kept = np.array([s.num_kept for s in sources], dtype=np.int64)
        self.order = FEISTEL
        self.set_order(order)
        self._kept.update(kept or {})

    # -- pickling: workers rebuild the (large) caches lazily ------------------------------
    _CACHES = ("_kept", "_perms", "_keys", "_orders", "_tables")

    def _reset_caches(self) -> None:
        self._kept: dict[int, KeptIndex] = {}
        self._perms: dict[tuple[int, int], np.ndarray] = {}  # MATERIALISED only
        self._keys: dict[tuple[int, int], np.ndarray] = {}  # FEISTEL round keys per (source, epoch)
        self._orders: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._tables: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._CACHES}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_caches()

    def cache_bytes(self) -> int:
        """Bytes of the arrays this mixture holds (its lazily filled caches): what a worker pays."""
        values = [v for name in self._CACHES for v in getattr(self, name).values()]
        return sum(a.nbytes for v in values for a in (v if isinstance(v, tuple) else (v,)))

    # -- the within-source order ----------------------------------------------------------
    def set_order(self, order: str) -> None:
        """Use `order` (FEISTEL or MATERIALISED) for the records within each source."""
        if order not in ORDERS:
            raise ValueError(f"unknown within-source order {order!r}; one of {', '.join(ORDERS)}")
        kept = getattr(self, "_kept", {})
        self._reset_caches()
        self._kept.update(kept)  # the kept records do not depend on the order
        self.order = order

    def adopt_order(self, fingerprint: str) -> bool:
        """Switch to the order whose stream has `fingerprint` (a checkpoint's), if one has it."""
        for order in ORDERS:
            if fingerprint == self.fingerprint(order):
                self.set_order(order)
                return True
        return False

    # -- sizes ----------------------------------------------------------------------------
    def num_samples(self, epochs: float) -> int:
        return math.ceil(epochs * self.samples_per_epoch)

    def num_steps(self, global_batch: int, epochs: float) -> int:
        """Optimizer steps of `epochs` passes: ceil(samples / global batch) (docs/training.md, "Mixture")."""
        return math.ceil(self.num_samples(epochs) / global_batch)

    def kept_index(self, s: int) -> KeptIndex:
        """Source s's records inside the data fraction (rank -> record index), built once."""
        if s not in self._kept:
            src = self.sources[s]
            self._kept[s] = kept_index(
                self.seed, src.name, src.manifest.num_records, self.fraction, self.heldout
            )
            assert len(self._kept[s]) == src.num_kept
        return self._kept[s]

    def kept(self, s: int) -> np.ndarray:
        """Every kept record index of source s, sorted (materialised: for reports and tests)."""
        return self.kept_index(s).all()

    def heldout_records(self, s: int) -> np.ndarray:
        """Source s's held-out split (`fraction.heldout_indices`): the same for every fraction."""
        src = self.sources[s]
        return heldout_indices(self.seed, src.name, src.manifest.num_records, self.heldout)

    # -- the schedule ---------------------------------------------------------------------
    def _epoch_table(self, epoch: int) -> np.ndarray:
        """[chunks + 1, S]: draws of each source before each chunk of `epoch` (prefix sums)."""
        if epoch not in self._tables:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, 1, epoch])))
            left = self.per_epoch.copy()
            rows = [np.zeros(len(left), dtype=np.int64)]
            for start in range(0, self.samples_per_epoch, CHUNK):
                size = min(CHUNK, self.samples_per_epoch - start)
                counts = rng.multivariate_hypergeometric(left, size)
                left -= counts
                rows.append(rows[-1] + counts)
            if len(self._tables) > 2:
                self._tables.clear()
            self._tables[epoch] = np.stack(rows)
        return self._tables[epoch]

    def _chunk_order(self, epoch: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """Source of each position in the chunk, and its rank among that source's positions."""
        if (epoch, chunk) not in self._orders:
            table = self._epoch_table(epoch)
            counts = table[chunk + 1] - table[chunk]
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, 3, epoch, chunk])))
            order = rng.permutation(np.repeat(np.arange(len(self.sources)), counts))
            by_source = np.argsort(order, kind="stable")
            group_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
            rank = np.empty(len(order), dtype=np.int64)
            rank[by_source] = np.arange(len(order)) - group_start[order[by_source]]
            if len(self._orders) > 64:
                self._orders.clear()
            self._orders[(epoch, chunk)] = (order, rank)
        return self._orders[(epoch, chunk)]

    def _permutation(self, s: int, epoch: int) -> np.ndarray:
        if (s, epoch) not in self._perms:
            key = source_key(self.seed, self.sources[s].name)
            seq = np.random.SeedSequence([self.seed, 2, key & 0xFFFFFFFF, key >> 32, epoch])
            if len(self._perms) > 4 * len(self.sources):
                self._perms.clear()
            self._perms[(s, epoch)] = np.random.Generator(np.random.PCG64(seq)).permutation(
                self.sources[s].num_kept
            )
        return self._perms[(s, epoch)]

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stream positions -> (source index, record index within that source), both int64."""
        positions = np.asarray(positions, dtype=np.int64)
        sources = np.empty(len(positions), dtype=np.int64)
        draws = np.empty(len(positions), dtype=np.int64)  # k: how many earlier draws of that source
        epochs, offsets = np.divmod(positions, self.samples_per_epoch)
        chunks = offsets // CHUNK
        for epoch, chunk in {(int(e), int(c)) for e, c in zip(epochs, chunks, strict=True)}:
            sel = (epochs == epoch) & (chunks == chunk)
            order, rank = self._chunk_order(epoch, chunk)
            within = offsets[sel] % CHUNK
            src = order[within]
            sources[sel] = src
            before = epoch * self.per_epoch + self._epoch_table(epoch)[chunk]
            draws[sel] = before[src] + rank[within]
        source_epochs, within = np.divmod(draws, self.num_kept[sources])
        ranks = self._permute(sources, source_epochs, within)
        records = np.empty(len(positions), dtype=np.int64)
        for s in np.unique(sources):
            sel = sources == s
            records[sel] = self.kept_index(int(s)).take(ranks[sel])
        return sources, records

    def _permute(self, sources: np.ndarray, epochs: np.ndarray, within: np.ndarray) -> np.ndarray:
        """perm_{s,e}(k) for every (source, source epoch, k): the rank among the kept records."""
        pairs = np.unique(np.stack([sources, epochs]), axis=1).T.tolist() if len(sources) else []
        if self.order == MATERIALISED:
            out = np.empty(len(within), dtype=np.int64)
            for s, e in pairs:
                sel = (sources == s) & (epochs == e)
                out[sel] = self._permutation(s, e)[within[sel]]
            return out
        keys = np.empty((len(within), ROUNDS), dtype=np.uint64)
        for s, e in pairs:
            keys[(sources == s) & (epochs == e)] = self._round_keys(s, e)
        return permute_many(within, self.num_kept[sources], keys)

    def _round_keys(self, s: int, epoch: int) -> np.ndarray:
        if (s, epoch) not in self._keys:
            text = f"sphinxx.order\x00{self.seed}\x00{self.sources[s].name}\x00{epoch}"
            key = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
            if len(self._keys) > 4 * len(self.sources):
                self._keys.clear()
            self._keys[(s, epoch)] = round_keys(key)
        return self._keys[(s, epoch)]

    # -- reporting ------------------------------------------------------------------------
    def fingerprint(self, order: str | None = None) -> str:
        """Changes iff the stream would change (stored with the sampler state); of this mixture's
        order, or of `order`'s stream."""
        parts = [[s.name, s.manifest.num_records, s.weight, s.num_kept] for s in self.sources]
        # CHUNK and the schedule's layout are part of the stream too.
        fields: dict[str, Any] = {
            "sources": parts,
            "fraction": self.fraction,
            "seed": self.seed,
            "chunk": CHUNK,
        }
        if (order or self.order) == MATERIALISED:
            fields["v"] = 2  # exactly the fingerprint of the streams before FEISTEL
        else:
            fields.update(v=3, order=FEISTEL)
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        """Resolved record counts and shares per source and per domain (logged as MLflow params)."""
        sources: dict[str, dict[str, Any]] = {
            s.name: {
                "domain": s.domain,
                "weight": s.weight,
                "records": s.manifest.num_records,
                "kept": s.num_kept,
                "heldout": heldout_count(s.manifest.num_records, self.heldout),
                "share": round(float(p), 6),
                "samples_per_epoch": int(c),
            }
            for s, p, c in zip(self.sources, self.probs, self.per_epoch, strict=True)
        }
        domains: dict[str, dict[str, float]] = {}
        for info in sources.values():
            d = domains.setdefault(info["domain"], {"kept": 0, "share": 0.0})
            d["kept"] += info["kept"]
            d["share"] = round(d["share"] + info["share"], 6)
        return {
            "fraction": self.fraction,
            "seed": self.seed,
            "records": sum(s.manifest.num_records for s in self.sources),
            "kept": sum(s.num_kept for s in self.sources),
            "samples_per_epoch": self.samples_per_epoch,
            "sources": sources,
            "domains": domains,
        }


def load_mixture(data: Any) -> Mixture:
    """The mixture of a `DataConfig` (reads every source's manifest through the storage layer)."""
    sources, kept = [], {}
    for s, spec in enumerate(data.sources):
        root = uri_mod.normalize(spec.uri)
        manifest = read_manifest(root)
        # Built once here and kept: DataLoader workers forked from this process share it.
        kept[s] = kept_index(data.seed, spec.name, manifest.num_records, data.fraction, data.heldout_records)
        sources.append(
            MixtureSource(spec.name, root, spec.domain, float(spec.weight), manifest, len(kept[s]))
        )
    return Mixture(sources, data.fraction, data.seed, data.heldout_records, kept=kept)
