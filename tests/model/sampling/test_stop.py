"""find_stop (model/sampling/stop.py): the earliest stop string wins."""

from __future__ import annotations

import pytest

from sphinxx.model.sampling.stop import find_stop


def test_earliest_occurrence_of_any_stop() -> None:
    assert find_stop("a red cube\n### Human:", ["###"]) == 11
    assert find_stop("one. two ### three", ["###", "."]) == 3
    assert find_stop("no stop here", ["###", "</s>"]) is None
    assert find_stop("", ["###"]) is None
    assert find_stop("ab##", ["###"]) is None  # a partial stop is not a stop


def test_empty_stop_string_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        find_stop("text", ["###", ""])
