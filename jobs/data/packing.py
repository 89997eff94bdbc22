"""Which decoder row each sample of a micro-batch takes: packing, and the modes of `data.packing`.

The window packed is one micro-batch: the samples the elastic sampler deals to one slot of a
global batch (a window of the shuffled mixture stream). Which samples a step trains on is the
sampler's business alone, so packing changes no sample a run, a resume or a resize sees
(docs/training.md, "Packed rows"); the rows are a pure function of the window's lengths, so the
same micro-batch always packs the same way.

`pack_rows` is first-fit decreasing (longest first, ties in stream order) into the fewest rows of
at most `capacity` (= data.seq_len) positions, with the row width then shrunk to the smallest that
first-fit still fits into that many rows: rows come out near-equally full, so right padding
(rows x the longest row, minus the real positions) is what is left of one row's slack.

Modes (`data.packing`):
- `packed`: `pack_rows`; the model attends block-diagonally (each sample to itself);
- `padded`: one sample per row in stream order, right-padded to the longest (the layout before
  packing, for a decoder that cannot take a mask).
"""

from __future__ import annotations

from collections.abc import Sequence

from sphinxx.schema.run import PACKING_MODES

PACKED, PADDED = PACKING_MODES
MODES = PACKING_MODES


def first_fit(order: Sequence[int], lengths: Sequence[int], capacity: int, max_rows: int) -> list[int] | None:
    """Row of each sample placing samples in `order` into the first row with room; None if more than
    `max_rows` rows would be needed."""
    rows = [-1] * len(lengths)
    fill: list[int] = []
    for i in order:
        for r, used in enumerate(fill):
            if used + lengths[i] <= capacity:
                fill[r] += lengths[i]
                rows[i] = r
                break
        else:
            if len(fill) == max_rows:
                return None
            fill.append(lengths[i])
            rows[i] = len(fill) - 1
    return rows


def pack_rows(lengths: Sequence[int], capacity: int) -> list[int]:
    """Row index of each sample: first-fit decreasing into the fewest rows of <= `capacity`
    positions, then the narrowest width that keeps that row count. Rows are numbered by their first
    sample in input order, so row r's samples keep their stream order."""
    if not lengths:
        return []
    if min(lengths) < 1 or max(lengths) > capacity:
        raise ValueError(f"sample lengths must lie in 1..{capacity} (data.seq_len), got {list(lengths)}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    total, longest = sum(lengths), max(lengths)
    num_rows = -(-total // capacity)
    rows = first_fit(order, lengths, capacity, num_rows)
    while rows is None:  # first-fit decreasing needs a row more than the lower bound
        num_rows += 1
        rows = first_fit(order, lengths, capacity, num_rows)
    lo, hi = max(longest, -(-total // num_rows)), capacity  # the narrowest width that fits lies here
    while lo < hi:
        mid = (lo + hi) // 2
        fitted = first_fit(order, lengths, mid, num_rows)
        if fitted is None:
            lo = mid + 1
        else:
            hi, rows = mid, fitted
    return _renumber(rows)  # the fit at the narrowest width found


def _renumber(rows: list[int]) -> list[int]:
    """Rows numbered in order of their first sample."""
    names: dict[int, int] = {}
    return [names.setdefault(r, len(names)) for r in rows]


def assign_rows(lengths: Sequence[int], capacity: int, mode: str) -> list[int]:
    """Each sample's decoder row under `mode` (`data.packing`)."""
    if mode not in MODES:
        raise ValueError(f"data.packing must be one of {', '.join(MODES)}, got {mode!r}")
    return pack_rows(lengths, capacity) if mode == PACKED else list(range(len(lengths)))


def computed_positions(lengths: Sequence[int], rows: Sequence[int]) -> int:
    """Decoder positions one forward computes: rows x the fullest row (right padding included)."""
    if not lengths:
        return 0
    fill: dict[int, int] = {}
    for r, n in zip(rows, lengths, strict=True):
        fill[r] = fill.get(r, 0) + n
    return len(fill) * max(fill.values())
