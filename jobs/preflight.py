"""The pre-flight of a planned sweep from this machine: every input readable, every prefix writable.

The operator checks each TrainingRun before its first RayJob (`sphinxx.operator.preflight`); the
laptop does the same for a whole sweep, with the same list of inputs (`sphinxx.sweep.inputs`) and
the same probes (`sphinxx.storage.probe`), in `sphinxx sweep check FILE` and before
`sphinxx sweep run --local` starts Ray. An input shared by many points is probed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

from sphinxx.schema.run import RunConfig
from sphinxx.storage import StorageOptions
from sphinxx.storage.probe import probe_read, probe_write
from sphinxx.sweep.inputs import Input, run_inputs
from sphinxx.sweep.points import Point


@dataclass(frozen=True)
class Needed:
    """One distinct input of a sweep and the points that need it."""

    input: Input
    points: tuple[str, ...]
    all_points: bool
    endpoint_url: str | None

    def probe(self) -> str | None:
        """Why this input cannot be used, or None when it can (one request or a few)."""
        options = StorageOptions(endpoint_url=self.endpoint_url)
        if self.input.access == "write":
            return probe_write(self.input.uri, options)
        return probe_read(self.input.uri, self.input.needs_any, options)

    def line(self, why: str | None) -> str:
        where = "all points" if self.all_points else ", ".join(self.points)
        item = self.input
        if why is None:
            return f"ok    {item.field}: {item.uri} ({item.access}; {where})"
        return f"FAIL  {item.field}: {item.uri} {why} ({where})"


def needed(points: list[tuple[Point, RunConfig]]) -> list[Needed]:
    """Every distinct input of the planned points, in the order they are first named."""
    users: dict[Input, list[str]] = {}
    endpoints: dict[Input, str | None] = {}
    for point, cfg in points:
        for item in run_inputs(cfg):
            users.setdefault(item, []).append(point.name)
            endpoints[item] = cfg.storage.endpoint_url
    return [
        Needed(item, tuple(names), len(names) == len(points), endpoints[item])
        for item, names in users.items()
    ]


def preflight(inputs: list[Needed], out: TextIO, quiet: bool = False) -> int:
    """Probe every input (from `needed`), print one line each (only the failures when `quiet`);
    the number failing."""
    failed = 0
    for item in inputs:
        why = item.probe()
        failed += why is not None
        if why is not None or not quiet:
            print(item.line(why), file=out, flush=True)
    return failed
