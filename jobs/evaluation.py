"""Held-out evaluation of a training run (docs/training.md, "Held-out evaluation").

Every source keeps a held-out split (`data.heldout_records` records per source, the ones of
largest fraction hash: `jobs.data.fraction.heldout_indices`), disjoint from every data
fraction's training subset and the same for every point of a sweep. Every `train.eval_interval`
steps and at the last step, the run measures on it, per source, the summed cross-entropy of
the target tokens, their number, and the UTF-8 bytes of the text they spell; summed over all
data-parallel ranks, these give

- `heldout_loss`: mean loss per target token (nats), per source, per domain and overall;
- `heldout_bpb`: bits per byte of the target text, the tokenizer-independent number that
  compares LLM bases with different vocabularies, and the scaling law's L.

The held-out micro-batches (one source each, at most `train.micro_batch` records) are dealt
round-robin over the ranks; every rank runs the same number of forwards (padded with an empty
batch whose result is dropped), because expert parallelism exchanges tokens inside forward. A
rank's share depends on the world size, the sums do not (up to float summation order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sphinxx.jobs.data.collate import LoadedBatch, collate_rows
from sphinxx.jobs.data.dataset import RecordReader, SamplePipeline, SourceRef
from sphinxx.jobs.data.mixture import Mixture
from sphinxx.jobs.data.sampler import MicroBatchKey
from sphinxx.jobs.metrics import bits_per_byte

EVAL_STEP = -1  # the `step` of held-out micro-batch keys (no optimizer step reads them)


@dataclass(frozen=True)
class HeldoutSums:
    """Per source: [summed CE (nats), target tokens, target bytes], float64, summed over ranks."""

    names: tuple[str, ...]
    domains: tuple[str, ...]
    sums: torch.Tensor  # [num_sources, 3]

    def metrics(self) -> dict[str, float]:
        """heldout_loss / heldout_bpb overall, per domain (`/domain`) and per source (`/source:name`)."""
        out: dict[str, float] = {}
        groups: dict[str, list[int]] = {"": list(range(len(self.names)))}
        for i, (name, domain) in enumerate(zip(self.names, self.domains, strict=True)):
            groups.setdefault(f"/{domain}", []).append(i)
            groups[f"/source:{name}"] = [i]
        for suffix, rows in groups.items():
            ce, targets, nbytes = (float(v) for v in self.sums[rows].sum(dim=0))
            if targets == 0:
                continue
            out[f"heldout_loss{suffix}"] = ce / targets
            out[f"heldout_bpb{suffix}"] = bits_per_byte(ce, int(nbytes))
        return {k: v for k, v in out.items() if not math.isnan(v)}


def heldout_keys(mixture: Mixture, micro_batch: int) -> list[MicroBatchKey]:
    """Every held-out record of every source, in micro-batches of one source each (all ranks' keys)."""
    keys: list[MicroBatchKey] = []
    for s in range(len(mixture.sources)):
        records = [int(r) for r in mixture.heldout_records(s)]
        for start in range(0, len(records), micro_batch):
            chunk = tuple(records[start : start + micro_batch])
            keys.append(
                MicroBatchKey(EVAL_STEP, len(keys), tuple(range(len(chunk))), (s,) * len(chunk), chunk)
            )
    return keys


def due(step: int, total: int, interval: int, done_step: int | None) -> bool:
    """Whether the run evaluates after optimizer step `step` (1-based count of steps done): every
    `interval` steps and at the last, never twice for one step (a resumed run keeps its results)."""
    return step != done_step and (step == total or (interval > 0 and step % interval == 0))


def rank_keys(keys: Sequence[MicroBatchKey], rank: int, world_size: int) -> list[MicroBatchKey | None]:
    """Rank `rank`'s keys, round-robin, padded with None so every rank runs as many forwards."""
    per_rank = -(-len(keys) // world_size)
    mine: list[MicroBatchKey | None] = list(keys[rank::world_size])
    return mine + [None] * (per_rank - len(mine))


class HeldoutEvaluator:
    """Runs the held-out split through the model on this rank and sums over all ranks."""

    def __init__(
        self,
        mixture: Mixture,
        pipeline: SamplePipeline,
        micro_batch: int,
        rank: int,
        world_size: int,
        all_reduce: Callable[[torch.Tensor], torch.Tensor],
    ):
        self.mixture, self.pipeline = mixture, pipeline
        self.names = tuple(s.name for s in mixture.sources)
        self.domains = tuple(s.domain for s in mixture.sources)
        self.keys = rank_keys(heldout_keys(mixture, micro_batch), rank, world_size)
        self.all_reduce = all_reduce
        self._reader: RecordReader | None = None

    def _batch(self, key: MicroBatchKey | None) -> LoadedBatch:
        if key is None:  # padding: a one-token batch with no target (collate_rows' dummy row)
            out = LoadedBatch.empty(EVAL_STEP, -1, attempted=0)
            collate_rows(out, [], self.pipeline.encoder, self.pipeline.image)
            return out
        if self._reader is None:
            self._reader = RecordReader(SourceRef.from_mixture(self.mixture))
        return self.pipeline.build(key, self._reader.fetch(key), 0.0)

    @torch.no_grad()
    def run(self, model: torch.nn.Module, device: str) -> HeldoutSums:
        """Sums over every rank's held-out micro-batches (a collective: every rank must call it)."""
        was_training = model.training
        model.eval()
        sums = torch.zeros(len(self.names), 3, dtype=torch.float64)
        try:
            for key in self.keys:
                mb = self._batch(key)
                out = model(mb.on(device))
                if key is not None and mb.samples:
                    sums[key.sources[0]] += torch.tensor(
                        [
                            float(out.ce_sum.detach().float().item()),
                            float(mb.num_targets),
                            float(mb.target_bytes),
                        ],
                        dtype=torch.float64,
                    )
        finally:
            model.train(was_training)
        return HeldoutSums(self.names, self.domains, self.all_reduce(sums))
