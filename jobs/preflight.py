"""The pre-flight of a planned sweep from this machine: every input readable, every prefix writable.

The operator checks each TrainingRun before its first RayJob (`sphinxx.operator.preflight`); the
laptop does the same for a whole sweep, with the same list of inputs (`sphinxx.sweep.inputs`) and
the same probes (`sphinxx.storage.probe`), in `sphinxx sweep check FILE` and before
`sphinxx sweep run --local` starts Ray. An input shared by many points is probed once.
"""

from __future__ import annotations

from typing import TextIO

from sphinxx.storage import StorageOptions
from sphinxx.storage.probe import probe
from sphinxx.sweep import inputs
from sphinxx.sweep.inputs import Needed, needed

__all__ = ["Needed", "needed", "preflight", "probe_needed"]


def probe_needed(item: Needed) -> str | None:
    """Why this input cannot be used from here, or None when it can (one request or a few)."""
    options = StorageOptions(endpoint_url=item.endpoint_url)
    return probe(item.input.uri, item.input.access, item.input.needs_any, options)


def preflight(items: list[Needed], out: TextIO, quiet: bool = False) -> int:
    """Probe every input (from `needed`) with this machine's credentials, print one line each (only
    the failures when `quiet`); the number failing."""
    return inputs.preflight(items, probe_needed, out, quiet)
