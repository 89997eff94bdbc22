"""What a point reads and writes, for the pre-flight check (docs/operator.md, "Pre-flight checks").

A run that cannot read its weights or data fails minutes after its GPUs were allocated, in a
worker log. The operator (before a TrainingRun's first RayJob) and `sphinxx sweep check FILE` (from
a laptop) check every input first; this module says what to check, `sphinxx.storage.probe`
does the I/O. Pure: a resolved RunConfig in, a list out; `preflight` is handed the probe.

`needed` lists a planned sweep's distinct inputs once, with the points that use each, and
`preflight` prints one line per input: `sphinxx sweep check` (`sphinxx.jobs.preflight`) and
`sphinxx doctor SWEEP_FILE` (`sphinxx.operator.doctor_cli`) run the same lines with their probes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TextIO

from sphinxx.schema.run import RunConfig

from .points import Point

# A folder is usable as weights if it holds weight files; as a tokenizer if it holds one of its
# vocabularies (the file names transformers reads: fast tokenizer, SentencePiece, byte-level BPE).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class Input:
    """One URI a point needs: `field` is the config path that names it (for messages)."""

    field: str
    uri: str
    access: Literal["read", "write"]
    needs_any: tuple[str, ...] = ()  # a folder must hold a file ending with one of these


def run_inputs(cfg: RunConfig) -> list[Input]:
    """Every URI the run will read, and the checkpoint prefix it will write, in config order."""
    found = [
        Input(f"model.{name}", uri, "read", WEIGHT_SUFFIXES)
        for name in ("llm_weights", "convnext_weights", "dinov2_weights")
        if (uri := getattr(cfg.model, name))
    ]
    if cfg.data.tokenizer:
        found.append(Input("data.tokenizer", cfg.data.tokenizer, "read", TOKENIZER_FILES))
    for i, source in enumerate(cfg.data.sources):
        manifest = source.uri.rstrip("/") + "/manifest.json"
        found.append(Input(f"data.sources[{i}] ({source.name})", manifest, "read"))
    for i, task in enumerate(cfg.eval.benchmarks.tasks):
        found.append(
            Input(f"eval.benchmarks.tasks[{i}]" + (f" ({task.name})" if task.name else ""), task.uri, "read")
        )
    found.append(Input("storage.uri", cfg.storage.uri, "write"))
    return found


@dataclass(frozen=True)
class Needed:
    """One distinct input of a sweep and the points that need it."""

    input: Input
    points: tuple[str, ...]
    all_points: bool
    endpoint_url: str | None

    def describe(self, why: str | None) -> str:
        """`field: uri`, why it cannot be used (or how it is used) and by which points."""
        where = "all points" if self.all_points else ", ".join(self.points)
        item = self.input
        if why is None:
            return f"{item.field}: {item.uri} ({item.access}; {where})"
        return f"{item.field}: {item.uri} {why} ({where})"

    def line(self, why: str | None) -> str:
        return f"{'ok  ' if why is None else 'FAIL'}  {self.describe(why)}"


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


def preflight(
    inputs: list[Needed], probe: Callable[[Needed], str | None], out: TextIO, quiet: bool = False
) -> int:
    """Probe every input (from `needed`) with `probe` (None: usable, else why not), print one line
    each (only the failures when `quiet`); the number failing."""
    failed = 0
    for item in inputs:
        why = probe(item)
        failed += why is not None
        if why is not None or not quiet:
            print(item.line(why), file=out, flush=True)
    return failed
