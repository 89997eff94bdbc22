"""Where generation stops in decoded text: the earliest occurrence of any stop string."""

from __future__ import annotations

from collections.abc import Sequence


def find_stop(text: str, stop_strings: Sequence[str]) -> int | None:
    """Index in `text` where the first stop string to appear begins, or None.

    With several matches the earliest start wins (ties: the stop listed first). Empty stop
    strings are refused: they would stop before the first character.
    """
    best: int | None = None
    for stop in stop_strings:
        if not stop:
            raise ValueError("a stop string must not be empty")
        at = text.find(stop)
        if at >= 0 and (best is None or at < best):
            best = at
    return best
