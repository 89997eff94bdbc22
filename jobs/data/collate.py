"""What the loader yields: one collated micro-batch plus the accounting the train loop logs.

The tensors are the model's own batch format (`sphinxx.model.sphinx.SphinxBatch`, built by its
`collate`), so the data pipeline and the model cannot disagree on layout. Around it:
which samples the rows are (for resume checks and tests), bad records with their locations,
skipped samples, token/image counts and per-stage timings.

A micro-batch whose records were all bad or skipped still has one row: [BOS] with no target.
Every rank then runs the same number of forward/backward passes (collectives stay matched)
and the row adds nothing to the loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sphinxx.jobs.data.packing import PADDED, assign_rows, computed_positions
from sphinxx.jobs.data.template import ConversationEncoder
from sphinxx.model.anyres import AnyResConfig
from sphinxx.model.sphinx import IGNORE_INDEX, SphinxBatch, SphinxSample, collate


@dataclass
class LoadedBatch:
    step: int  # global batch index (the optimizer step it feeds)
    micro: int  # accumulation index within the step
    batch: SphinxBatch | None = None
    samples: list[tuple[int, int]] = field(default_factory=list)  # (source, record) per real row
    positions: list[int] = field(default_factory=list)  # stream position per real row
    attempted: int = 0  # records this micro-batch was dealt
    bad: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, location, detail)
    skipped: dict[str, int] = field(default_factory=dict)  # too_long / no_target
    truncated: int = 0  # rows whose text was cut to fit data.seq_len
    num_images: int = 0
    num_image_tokens: int = 0  # LLM positions of image blocks (views + skip tokens)
    num_text_tokens: int = 0  # BOS + text + EOS
    num_targets: int = 0  # labelled tokens (sum over the global batch to normalise the loss)
    computed_positions: int = 0  # decoder positions of the forward: rows x longest row (padding included)
    target_bytes: int = 0  # UTF-8 bytes of the text the targets spell (bits per byte)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @classmethod
    def empty(cls, step: int, micro: int, attempted: int) -> LoadedBatch:
        return cls(step=step, micro=micro, attempted=attempted)

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    def on(self, device: str) -> SphinxBatch:
        """The collated batch on `device`
        (`collate_rows` sets it before a micro-batch leaves the pipeline)."""
        if self.batch is None:
            raise RuntimeError(f"micro-batch {self.micro} of step {self.step} was never collated")
        return self.batch.to(device)

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds

    def pin_memory(self) -> LoadedBatch:
        """Called by the DataLoader when pin_memory=True (CUDA)."""
        if self.batch is not None:
            self.batch = SphinxBatch(**{k: v.pin_memory() for k, v in self.batch.__dict__.items()})
        return self


def collate_rows(
    out: LoadedBatch,
    rows: Sequence[SphinxSample],
    encoder: ConversationEncoder,
    image: AnyResConfig,
    packing: str = PADDED,
) -> None:
    """Fill `out.batch` and the counts from the kept samples (a dummy row if none is left), laid
    into decoder rows as `packing` (`data.packing`, see `packing.py`) says."""
    if not rows:
        rows = [SphinxSample(tokens=[encoder.bos_id], labels=[IGNORE_INDEX], image=None)]
    lengths = [len(r.tokens) + (r.image.num_tokens if r.image is not None else 0) for r in rows]
    decoder_rows = assign_rows(lengths, encoder.seq_len, packing)
    out.batch = collate(rows, pad_id=encoder.pad_id, image=image, rows=decoder_rows)
    out.computed_positions = computed_positions(lengths, decoder_rows)
    out.num_images = sum(1 for r in rows if r.image is not None)
    out.num_image_tokens = sum(r.image.num_tokens for r in rows if r.image is not None)
    out.num_text_tokens = int(out.batch.text_lengths.sum()) if out.samples else 0
    out.num_targets = out.batch.num_targets
