"""The loader the train loop iterates: one rank's micro-batches, resume state, bad-record policy.

    data = build_data(cfg.data, cfg.train, rank=r, world_size=w)   # reads manifests, the tokenizer
    data.load_state_dict(ckpt["data"])                     # optional: resume (any world size)
    for step_batches in data.iter_steps():                 # accum_steps LoadedBatch per step
        ...  # forward/backward each .batch (a SphinxBatch), then the optimizer step
        ckpt["data"] = data.state_dict()                   # after the step: next global batch

A rank reads only its own slots of each global batch (see `sampler`). Bad records are counted
here, in the training process, logged with their location and skipped; the run fails with
`TooManyBadRecordsError` once bad records exceed `data.max_bad_record_ratio` of the records
this rank has been dealt. Early on, the ratio is taken over at least `min_records_for_ratio`
records so that a handful of bad records at the start cannot fail a healthy run; when the
stream ends the plain ratio applies.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from sphinxx.jobs.data.collate import LoadedBatch
from sphinxx.jobs.data.dataset import MicroBatchStream, RecordReader, SamplePipeline, SourceRef, worker_init
from sphinxx.jobs.data.mixture import FEISTEL, Mixture, load_mixture
from sphinxx.jobs.data.packing import PADDED
from sphinxx.jobs.data.sampler import ElasticSampler, check_state
from sphinxx.jobs.data.template import ConversationEncoder, load_tokenizer
from sphinxx.model.anyres import CELL_SIZE, AnyResConfig
from sphinxx.schema.run import DataConfig, TrainConfig

log = logging.getLogger(__name__)
# Byte-level tokenizers warn (and disable threads) when used across fork; we never batch-encode.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
LOG_FIRST_BAD = 20  # log every bad record up to this many per kind, then every 100th


class TooManyBadRecordsError(RuntimeError):
    """More unreadable records than `data.max_bad_record_ratio` allows."""


@dataclass
class DataStats:
    """Running counts of one rank (saved with the sampler state, so they survive a resume)."""

    records: int = 0  # dealt to this rank
    samples: int = 0  # made it into a batch
    images: int = 0
    image_tokens: int = 0
    text_tokens: int = 0
    targets: int = 0
    computed_positions: int = 0  # decoder positions computed, right padding included
    truncated: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def num_bad(self) -> int:
        return sum(self.bad.values())

    def add(self, mb: LoadedBatch) -> None:
        self.records += mb.attempted
        self.samples += mb.num_samples
        self.images += mb.num_images
        self.image_tokens += mb.num_image_tokens
        self.text_tokens += mb.num_text_tokens
        self.targets += mb.num_targets
        self.computed_positions += mb.computed_positions
        self.truncated += mb.truncated
        for kind, _loc, _detail in mb.bad:
            self.bad[kind] = self.bad.get(kind, 0) + 1
        for kind, n in mb.skipped.items():
            self.skipped[kind] = self.skipped.get(kind, 0) + n

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow (`data/...`)."""
        out = {f"data/{k}": float(getattr(self, k)) for k in ("records", "samples", "images", "targets")}
        out.update(
            {"data/image_tokens": float(self.image_tokens), "data/text_tokens": float(self.text_tokens)}
        )
        real = self.image_tokens + self.text_tokens
        out["data/padded_ratio"] = 1.0 - real / self.computed_positions if self.computed_positions else 0.0
        out["data/bad_records"] = float(self.num_bad)
        out["data/bad_ratio"] = self.num_bad / max(1, self.records)
        return out


class DataStream:
    """Iterable over one rank's LoadedBatch micro-batches from `start_step` to `stop_step`."""

    def __init__(
        self,
        mixture: Mixture,
        encoder: ConversationEncoder,
        image: AnyResConfig,
        global_batch: int,
        micro_batch: int,
        rank: int = 0,
        world_size: int = 1,
        stop_step: int | None = None,
        num_workers: int = 0,
        max_bad_record_ratio: float = 0.01,
        min_records_for_ratio: int = 1000,
        read_ahead: int = 2,
        packing: str = PADDED,
    ):
        self.mixture, self.encoder, self.image = mixture, encoder, image
        self.packing = packing
        self.sampler = ElasticSampler(mixture, global_batch, micro_batch, rank, world_size, 0, stop_step)
        self.num_workers = num_workers
        self.max_bad_record_ratio = max_bad_record_ratio
        self.min_records_for_ratio = min_records_for_ratio
        self.read_ahead = read_ahead
        self.next_step = 0
        self.stats = DataStats()
        self._bad_seen: Counter[str] = Counter()

    @property
    def accum_steps(self) -> int:
        return self.sampler.accum_steps

    @property
    def stop_step(self) -> int | None:
        return self.sampler.stop_step

    # -- resume ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The next global batch to read (steps partly consumed are read again) plus the counts."""
        return {"sampler": self.sampler.state_dict(self.next_step), "stats": asdict(self.stats)}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        # A checkpoint of a stream in the order before FEISTEL goes on in that order (exactly).
        if (
            self.mixture.adopt_order(state["sampler"].get("fingerprint", ""))
            and self.mixture.order != FEISTEL
        ):
            log.info(
                "the checkpoint's data stream has the %s within-source order: continuing it",
                self.mixture.order,
            )
        self.next_step = check_state(state["sampler"], self.mixture, self.sampler.global_batch, strict)
        self.stats = DataStats(**state.get("stats", {}))

    # -- iteration ------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        self.sampler.start_step = self.next_step
        reader = RecordReader(SourceRef.from_mixture(self.mixture))
        dataset = MicroBatchStream(
            self.sampler, reader, SamplePipeline(self.encoder, self.image, self.packing), self.read_ahead
        )
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            kwargs.update(prefetch_factor=2, worker_init_fn=worker_init, persistent_workers=False)
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            pin_memory=torch.cuda.is_available(),
            **kwargs,
        )

    def __iter__(self) -> Iterator[LoadedBatch]:
        for mb in self._loader():
            self._account(mb)
            if mb.micro == self.accum_steps - 1:
                self.next_step = mb.step + 1
            yield mb
        self._check_bad_ratio(final=True)

    def iter_steps(self) -> Iterator[list[LoadedBatch]]:
        """The micro-batches grouped per optimizer step (sum their num_targets for the loss)."""
        group: list[LoadedBatch] = []
        for mb in self:
            group.append(mb)
            if mb.micro == self.accum_steps - 1:
                yield group
                group = []

    def _account(self, mb: LoadedBatch) -> None:
        self.stats.add(mb)
        for kind, location, detail in mb.bad:
            self._bad_seen[kind] += 1
            n = self._bad_seen[kind]
            if n <= LOG_FIRST_BAD or n % 100 == 0:
                log.warning("skipping bad record (%s #%d) at %s: %s", kind, n, location, detail)
        self._check_bad_ratio(final=False)

    def _check_bad_ratio(self, final: bool) -> None:
        bad, records = self.stats.num_bad, self.stats.records
        denominator = records if final else max(records, self.min_records_for_ratio)
        if bad and bad > self.max_bad_record_ratio * denominator:
            kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.stats.bad.items()))
            raise TooManyBadRecordsError(
                f"{bad} of {records} records read by rank {self.sampler.rank} were unusable ({kinds}), "
                f"{bad / max(records, 1):.1%} > data.max_bad_record_ratio={self.max_bad_record_ratio:g}. "
                "The warnings above name each record's location; fix or remove those records, or raise "
                "data.max_bad_record_ratio to train on the rest."
            )


def _identity(item: Any) -> Any:
    """`collate_fn` with `batch_size=None`: each item is already a whole micro-batch (a LoadedBatch)."""
    return item


def image_config(data: DataConfig, use_skip_token: bool = True) -> AnyResConfig:
    """The processor settings of a run (`data.canvas`, `data.convnext_view_size` and the model's
    `use_skip_token`; they must match the model's)."""
    return AnyResConfig(
        grid=data.canvas // CELL_SIZE,
        convnext_view_size=data.convnext_view_size,
        use_skip_token=use_skip_token,
    )


def build_data(
    data: DataConfig,
    train: TrainConfig,
    *,
    use_skip_token: bool = True,
    rank: int = 0,
    world_size: int = 1,
    tokenizer: Any = None,
    mixture: Mixture | None = None,
    num_steps: int | None = None,
    **kwargs: Any,
) -> DataStream:
    """The DataStream of rank `rank` of `world_size` for a run's `data` and `train` sections.

    `num_steps` defaults to `train.steps`, or, when that is 0, to the steps of `data.epochs`
    passes over the mixture. `tokenizer` defaults to the one at `data.tokenizer`.
    """
    if tokenizer is None:
        if not data.tokenizer:
            raise ValueError(
                "data.tokenizer is not set: give the path or URI of Hugging Face tokenizer files"
            )
        tokenizer = load_tokenizer(data.tokenizer)
    mixture = mixture or load_mixture(data)
    if num_steps is None:
        num_steps = train.steps or mixture.num_steps(train.global_batch, data.epochs)
    return DataStream(
        mixture,
        ConversationEncoder(tokenizer, data.seq_len),
        image_config(data, use_skip_token),
        train.global_batch,
        train.micro_batch,
        rank,
        world_size,
        stop_step=num_steps,
        num_workers=data.num_workers,
        max_bad_record_ratio=data.max_bad_record_ratio,
        packing=data.packing,
        **kwargs,
    )
