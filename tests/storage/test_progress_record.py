"""The run's progress record on every backend: overwritten whole, read back, absent before the first write."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from sphinxx.storage import CheckpointStore
from sphinxx.storage.conditional import replace_local


def test_progress_record_round_trips_and_is_absent_at_first(prefix: str) -> None:
    store = CheckpointStore(prefix, "run-1")
    assert store.read_progress() is None
    store.write_progress(b'{"step": 1}')
    store.write_progress(b'{"step": 2}')
    assert store.read_progress() == b'{"step": 2}'
    assert store.layout.progress == f"{store.root}/progress.json"
    # It is not a checkpoint: nothing is committed, and the checkpoint listing does not see it.
    assert store.latest() is None and store.scan() == []


def test_a_local_overwrite_is_atomic_for_a_concurrent_reader(tmp_path: Path) -> None:
    """A reader racing the writer sees one whole record or the other, never a torn or empty file."""
    path = str(tmp_path / "run" / "progress.json")
    records = [bytes([65 + i]) * 200_000 for i in range(2)]
    replace_local(path, records[0])
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            with open(path, "rb") as f:
                seen.add(f.read())

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(200):
        replace_local(path, records[i % 2])
    stop.set()
    reader.join()
    assert seen <= set(records) and seen
    assert os.listdir(tmp_path / "run") == ["progress.json"]  # no temporary file left behind
