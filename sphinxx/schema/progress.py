"""The progress record: what a running job last said about itself, for the operator's live status.

Rank 0 of a training job overwrites one small JSON object next to its checkpoints,
`<storage.uri>/<run id>/progress.json` (storage's `RunLayout.progress`), every
`train.progress_seconds` seconds at a logged step, and at every commit and at the end. The
operator reads it on its timer while the run is Running and shows it in the TrainingRun's
`status.progress` (docs/operator.md, "Live progress"). The job writes it with `encode`, the
operator reads it with `read_record`; both are pure.

A record the operator cannot use is never a crash: `read_record` returns why (`Reading.reason`,
one CamelCase word, and a message naming the file and the field), and the operator shows that in
the `ProgressReported` condition and keeps the last good figures. Unknown keys are ignored (a
newer job may write more).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from .fields import SchemaError, count, field, parse

FORMAT_VERSION = 1
NAME = "progress.json"


@dataclass(frozen=True)
class ProgressRecord:
    """One record, as the job writes it (snake_case JSON)."""

    format_version: int = count(FORMAT_VERSION, "the record's format", minimum=1, maximum=1)
    run_id: str = field("", "the run it belongs to")
    attempt: int = count(0, "the attempt that wrote it (SPHINXX_ATTEMPT)", maximum=2**31)
    step: int = count(0, "optimizer steps done", maximum=2**62)
    total_steps: int = count(0, "optimizer steps of the run (0: not known)", maximum=2**62)
    loss: float | None = field(None, "training loss of the last step (None when not finite)")
    tokens_per_s: float = field(0.0, "tokens per second over the recent steps", minimum=0)
    samples_per_s: float = field(0.0, "samples per second over the recent steps", minimum=0)
    mfu: float | None = field(None, "model FLOPs utilisation (0..1)", minimum=0)
    mfu_estimate: bool = field(False, "the peak behind mfu is a measurement, not a datasheet figure")
    seconds_per_step: float = field(0.0, "wall seconds per optimizer step over the recent steps", minimum=0)
    eta_seconds: float | None = field(None, "seconds until the last step at the recent rate", minimum=0)
    tokens_seen: float = field(0.0, "training tokens consumed", minimum=0)
    time: float = field(0.0, "when it was written (Unix seconds, the writer's clock)", minimum=0)


def eta_seconds(step: int, total_steps: int, seconds_per_step: float) -> float | None:
    """Seconds to the last step at this rate; None while the rate or the total is unknown."""
    if total_steps <= 0 or seconds_per_step <= 0 or not math.isfinite(seconds_per_step):
        return None
    return max(total_steps - step, 0) * seconds_per_step


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def encode(record: ProgressRecord) -> bytes:
    """The record's bytes; a non-finite number (a diverged loss) is written as null, which JSON can hold."""
    data = {k: (_finite(v) if isinstance(v, float) else v) for k, v in dataclasses.asdict(record).items()}
    return json.dumps(data, sort_keys=True).encode()


@dataclass(frozen=True)
class Reading:
    """What the operator made of the record: the record when usable, else why not."""

    record: ProgressRecord | None
    reason: str  # Reported, NotWritten, Malformed, OtherRun, OlderAttempt, Stale (the operator: Unreadable)
    message: str


def read_record(
    data: bytes | None, uri: str, run_id: str, attempt: int, now: float, max_age: float, log_interval: int = 1
) -> Reading:
    """Parse and judge a record read from `uri` (None: no record there). Pure.

    Usable when it is well-formed, names this run, was written by this attempt (or a later one
    the operator has not seen yet) and is at most `max_age` seconds old by `now`, or three
    logged windows (`log_interval` steps at the record's own rate) when those are longer: the job
    writes only at a logged step.
    """
    if data is None:
        return Reading(None, "NotWritten", f"{uri}: no progress record yet")
    try:
        record = _parse(data, uri)
    except SchemaError as err:
        return Reading(None, "Malformed", f"ignored: {err}")
    if record.run_id != run_id:
        return Reading(None, "OtherRun", f"ignored: {uri} names run {record.run_id!r}, not {run_id!r}")
    if record.attempt < attempt:
        return Reading(
            None,
            "OlderAttempt",
            f"{uri} was written by attempt {record.attempt}; waiting for attempt {attempt}",
        )
    limit = max(max_age, 3 * log_interval * record.seconds_per_step)
    if now - record.time > limit:
        return Reading(
            None, "Stale", f"{uri} was last written at step {record.step}, more than {limit:.0f}s ago"
        )
    return Reading(record, "Reported", f"step {record.step} reported by attempt {record.attempt}")


def _parse(data: bytes, uri: str) -> ProgressRecord:
    try:
        body: Any = json.loads(data)
    except ValueError as err:  # not UTF-8 or not JSON (a torn write on a store without atomic PUT)
        raise SchemaError(uri, f"not JSON ({err})") from None
    if not isinstance(body, dict):
        raise SchemaError(uri, f"must be a JSON object, got {type(body).__name__}")
    version = body.get("format_version")
    if version != FORMAT_VERSION:
        raise SchemaError(f"{uri}: format_version", f"must be {FORMAT_VERSION}, got {version!r}")
    known = {f.name for f in dataclasses.fields(ProgressRecord)}
    return parse(ProgressRecord, {k: v for k, v in body.items() if k in known}, uri)


def clock(seconds: float) -> str:
    """`H:MM:SS` of a duration (hours are not wrapped into days)."""
    whole = max(int(round(seconds)), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
