"""What the local runner shows while a point trains: one live line, the job's noise kept in its log.

The job's output reaches the runner as Ray prints it: every worker line prefixed with
`(RayTrainWorker pid=N)` and colour codes, every line twice (Ray's log monitor forwards the
worker's stdout and its Train log handler alike), and between them Ray's and MLflow's own chatter
(placement-group cleaners, checkpoint registrations, database migrations). The log file keeps all
of it; the console gets:

- on a terminal, one line per point rewritten in place:
      [2/4] tiny-debug-d100  step 7/12 (58%)  loss 6.581  1,859 tok/s  ETA 0:00:04  ckpt 6
- elsewhere (CI, a pipe, `> file`), the same line printed once per new step, no control codes;
- the job's own `[sphinxx]` notes (a resume, for example), and errors and tracebacks, verbatim.

Pure parsing (`clean`, `parse_step`, `checkpoint_step`, `shown`) and a small renderer (`LiveLine`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import TextIO

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
RAY_PREFIX = re.compile(r"^\((?:[A-Za-z_][\w.]*)?\s*pid=\d+(?:,\s*ip=[^)]*)?\)\s*")
STEP = re.compile(r"^\[sphinxx\] step (?P<step>\d+)/(?P<total>\d+)\b")
LOSS = re.compile(r" loss (?P<loss>[-+\d.eE]+|nan|inf)\b")
TOKENS = re.compile(r"\| (?P<tok>[\d,.]+) tok/s")
ETA = re.compile(r"\| ETA (?P<eta>[\d:]+)\s*$")
POINTER = re.compile(r"pointer-(?:[^/)]*?-)?0*(\d+)\)?\s*$")
ERROR = re.compile(r"Traceback|Error\b|\berror:|Exception\b|FAILED|Killed")


@dataclass
class StepProgress:
    step: int
    total: int
    loss: float | None = None
    tokens_per_s: float | None = None
    eta: str | None = None


def clean(line: str) -> str:
    """A line as the job wrote it: no colour codes, no Ray `(Actor pid=N, ip=...)` prefix."""
    return RAY_PREFIX.sub("", ANSI.sub("", line)).rstrip("\n")


def parse_step(text: str) -> StepProgress | None:
    """The loop's progress line (`[sphinxx] step S/T ... loss L ... | R tok/s ... | ETA E`), parsed."""
    match = STEP.match(text)
    if match is None:
        return None
    loss, tokens, eta = LOSS.search(text), TOKENS.search(text), ETA.search(text)
    return StepProgress(
        step=int(match.group("step")),
        total=int(match.group("total")),
        loss=float(loss.group("loss")) if loss else None,
        tokens_per_s=float(tokens.group("tok").replace(",", "")) if tokens else None,
        eta=eta.group("eta") if eta else None,
    )


def checkpoint_step(text: str) -> int | None:
    """The step of a checkpoint Ray Train registered (its pointer folder), if the line says so."""
    if "Checkpoint successfully created" not in text:
        return None
    match = POINTER.search(text)
    return int(match.group(1)) if match else None


def shown(text: str) -> bool:
    """Whether a (cleaned) non-progress line belongs on the console: our notes, errors, tracebacks."""
    if text.startswith("[sphinxx]"):
        return True
    if "PlacementGroupCleaner" in text or text.startswith("{"):
        return False  # a known-harmless Ray complaint; the job's summary line (the runner reports it)
    return bool(ERROR.search(text))


@dataclass
class Repeats:
    """Ray prints each worker line twice: mostly back to back, but not always (a held-out line
    came again after the checkpoint lines that followed it). A line is a repeat when it equals
    the previous one, or when it is one of our own (`[sphinxx]`, each unique: it names its step)
    seen before."""

    _previous: str | None = None
    _ours: set[str] = field(default_factory=set)

    def seen(self, text: str) -> bool:
        if text == self._previous or text in self._ours:
            return True
        self._previous = text
        if text.startswith("[sphinxx]"):
            self._ours.add(text)
        return False


@dataclass
class LiveLine:
    """The console of one sweep: a live line for the point in progress, or plain lines off a terminal."""

    stream: TextIO = sys.stdout
    tty: bool | None = None
    _last: str = ""
    _drawn: bool = False

    def __post_init__(self) -> None:
        if self.tty is None:
            self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    @staticmethod
    def render(label: str, point: str, progress: StepProgress, checkpoint: int | None) -> str:
        done = progress.step / progress.total * 100 if progress.total else 100.0
        parts = [f"{label} {point}", f"step {progress.step}/{progress.total} ({done:.0f}%)"]
        if progress.loss is not None:
            parts.append(f"loss {progress.loss:.3f}")
        if progress.tokens_per_s:
            parts.append(f"{progress.tokens_per_s:,.0f} tok/s")
        if progress.eta:
            parts.append(f"ETA {progress.eta}")
        if checkpoint is not None:
            parts.append(f"ckpt {checkpoint}")
        return "  ".join(parts)

    def update(self, text: str) -> None:
        """Show a new state of the live line (a repeat of the last one is not shown again)."""
        if text == self._last:
            return
        self._last = text
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line that stays (an error, a resume, a point's result), above the live line."""
        self.end()
        self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        """Leave the live line where it is and move to a fresh line."""
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False
        self._last = ""
