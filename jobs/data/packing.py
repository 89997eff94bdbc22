"""Which decoder row each sample of a micro-batch takes: packing, and the modes of `data.packing`.

The window packed is one micro-batch: the samples the elastic sampler deals to one slot of a
global batch (a window of the shuffled mixture stream). Which samples a step trains on is the
sampler's business alone, so packing changes no sample a run, a resume or a resize sees
(docs/training.md, "Packed rows"); the rows are a pure function of the window's lengths, so the
same micro-batch always packs the same way.

`pack_rows` is first-fit decreasing (longest first, ties in stream order) into rows of at most
`capacity` (= data.seq_len) positions. Of the row counts from the fewest possible upwards, it takes
the one whose narrowest fitting width computes the fewest positions (rows x width): rows come out
near-equally full, so right padding is what is left of the lumpiest sample sizes. One row per
sample is among the candidates, so packing never computes more positions than padding.

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


def narrowest(
    order: Sequence[int], lengths: Sequence[int], capacity: int, num_rows: int
) -> tuple[int, list[int]] | None:
    """The narrowest width <= `capacity` at which first-fit in `order` needs at most `num_rows` rows,
    with its rows; None if even `capacity` needs more (binary search: the fit at the width returned
    is always a real one)."""
    rows = first_fit(order, lengths, capacity, num_rows)
    if rows is None:
        return None
    lo, hi = max(max(lengths), -(-sum(lengths) // num_rows)), capacity
    while lo < hi:
        mid = (lo + hi) // 2
        fitted = first_fit(order, lengths, mid, num_rows)
        if fitted is None:
            lo = mid + 1
        else:
            hi, rows = mid, fitted
    return hi, rows


def pack_rows(lengths: Sequence[int], capacity: int) -> list[int]:
    """Row index of each sample: first-fit decreasing into rows of at most `capacity` positions, the
    row count and width chosen to compute the fewest positions (rows x width; ties: fewer rows).
    Rows are numbered by their first sample in input order, so row r's samples keep stream order."""
    if not lengths:
        return []
    if min(lengths) < 1 or max(lengths) > capacity:
        raise ValueError(f"sample lengths must lie in 1..{capacity} (data.seq_len), got {list(lengths)}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    best: tuple[int, list[int]] | None = None
    for num_rows in range(-(-sum(lengths) // capacity), len(lengths) + 1):
        if best is not None and num_rows * max(lengths) >= best[0]:
            break  # no width below the longest sample: more rows cannot compute fewer positions
        fit = narrowest(order, lengths, capacity, num_rows)
        if fit is not None and (best is None or num_rows * fit[0] < best[0]):
            best = (num_rows * fit[0], fit[1])
    assert best is not None  # one row per sample always fits
    return _renumber(best[1])


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
