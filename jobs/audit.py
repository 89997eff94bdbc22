"""The sample audit trail: which stream positions each rank trained on at each step.

An elastic resize or a restart must neither repeat nor skip samples
(docs/training.md, "Elastic workers and the constant global batch"). The
trail answers "did a resume repeat or skip samples?" after the fact, from the processes that
actually trained, without trusting the sampler's own bookkeeping: the end-to-end tests read it.
Off unless SPHINXX_SAMPLE_TRACE names a directory (the driver forwards it to the workers).
"""

from __future__ import annotations

import json
import os

from sphinxx.jobs.context import Worker
from sphinxx.jobs.data.collate import LoadedBatch


class SampleTrace:
    """Optional audit trail: which stream positions each rank trained on at each step.

    Set SPHINXX_SAMPLE_TRACE to a directory and every rank appends one JSON line per optimizer
    step ({step, rank, world_size, attempt, pid, positions}) to its own file, flushed at once, so
    a crash loses nothing. Answers "did a resume repeat or skip samples?" after the fact.
    """

    def __init__(self, path: str | None, worker: Worker):
        self.worker = worker
        self.file = None
        if path:
            os.makedirs(path, exist_ok=True)
            name = f"rank{worker.rank}-attempt{worker.attempt}-pid{os.getpid()}.jsonl"
            self.file = open(os.path.join(path, name), "a")  # noqa: SIM115 - lives as long as the loop

    @classmethod
    def from_env(cls, worker: Worker) -> SampleTrace:
        return cls(os.environ.get("SPHINXX_SAMPLE_TRACE"), worker)

    def record(self, step: int, group: list[LoadedBatch]) -> None:
        if self.file is None:
            return
        line = {
            "step": step,
            "rank": self.worker.rank,
            "world_size": self.worker.world_size,
            "attempt": self.worker.attempt,
            "pid": os.getpid(),
            "positions": [p for mb in group for p in mb.positions],
        }
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()
