"""The operator's narrow seam to `sphinxx.storage`: read the latest committed checkpoint, store the config.

The operator never lists step folders itself: `CheckpointStore.latest()` returns only a step whose
commit marker (`manifest.json`) exists and whose files check out, so a resume never starts from a
partial checkpoint (docs/storage.md, "Reading: the latest good checkpoint"). Stores are cached per run, and
all of them share one filesystem per URI scheme and endpoint (`SharedFs`: one S3 client and connection
pool for every run, refreshed with its credentials every few minutes), because an S3 client costs
~0.5 s of CPU to build and about 2 MB to keep. The job's progress record (`progress.json`, the live
status) is read here too, and rollbacks go through here: the operator, not the user's machine, holds
the storage credentials.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from sphinxx.schema.fields import SchemaError, parse
from sphinxx.schema.status import BenchmarkScore
from sphinxx.storage import CheckpointStore, StorageOptions
from sphinxx.storage.shared_fs import SharedFs
from sphinxx.storage.uri import scheme

from .decide import Checkpoint

_stores: dict[tuple[str, str, str | None], CheckpointStore] = {}
_shared: dict[tuple[str, str | None], SharedFs] = {}  # (scheme, endpoint) -> the runs' filesystem
_lock = threading.Lock()
METRIC_KEYS = ("loss", "train_loss", "val_loss")  # the first one present becomes status.metrics.loss


def _store(prefix: str, run_id: str, endpoint_url: str | None) -> CheckpointStore:
    key = (prefix, run_id, endpoint_url)
    with _lock:
        if key not in _stores:
            fs_key = (scheme(prefix), endpoint_url)
            if fs_key not in _shared:
                _shared[fs_key] = SharedFs(prefix, StorageOptions(endpoint_url=endpoint_url))
            _stores[key] = CheckpointStore(prefix, run_id, shared=_shared[fs_key])
        return _stores[key]


def latest(prefix: str, run_id: str, endpoint_url: str | None = None) -> Checkpoint | None:
    """The newest committed checkpoint of a run, or None."""
    info = _store(prefix, run_id, endpoint_url).latest()
    if info is None:
        return None
    committed = dict(info.manifest.metrics)
    metrics = {k: float(v) for k, v in committed.items() if isinstance(v, (int, float))}
    loss = next((metrics[k] for k in METRIC_KEYS if k in metrics), None)
    if loss is not None:
        metrics["loss"] = loss
    return Checkpoint(int(info.step), str(info.uri), metrics, benchmarks(committed.get("benchmarks")))


def benchmarks(entries: Any) -> dict[str, BenchmarkScore]:
    """The job's `benchmarks` metric record (docs/training.md, "Benchmarks in every point") as typed
    status; an entry that does not parse (a newer or older job's) is left out, never fatal."""
    out: dict[str, BenchmarkScore] = {}
    for name, item in (entries or {}).items() if isinstance(entries, dict) else ():
        try:
            out[str(name)] = parse(BenchmarkScore, item)
        except SchemaError:
            continue
    return out


@dataclass(frozen=True)
class RolledBack:
    """What a rollback did: the step the run resumes from and the commits that no longer count."""

    to_step: int
    uri: str  # the checkpoint the next attempt resumes from
    steps: tuple[int, ...]


def rollback(
    prefix: str, run_id: str, to_step: int, reason: str, endpoint_url: str | None = None
) -> RolledBack:
    """Mark every checkpoint newer than `to_step` as rolled back (kept on S3; docs/storage.md, "Rollback").

    Raises the store's errors (CheckpointNotFoundError, ValueError, CheckpointCorruptError) with
    a message naming the step.
    """
    store = _store(prefix, run_id, endpoint_url)
    record = store.rollback(to_step, reason)
    return RolledBack(record.to_step, str(store.layout.step_dir(record.to_step)), tuple(record.step_numbers))


def read_progress(prefix: str, run_id: str, endpoint_url: str | None = None) -> tuple[bytes | None, str]:
    """The run's progress record (one GET; None when the job has not written one) and its URI."""
    store = _store(prefix, run_id, endpoint_url)
    return store.read_progress(), store.layout.progress


def write_config(prefix: str, run_id: str, text: str, endpoint_url: str | None = None) -> str:
    """Store the resolved config next to the run's checkpoints; return its URI (the job's --config)."""
    store = _store(prefix, run_id, endpoint_url)
    store.write_run_config(text)
    return str(store.layout.run_config)


def delete_run(prefix: str, run_id: str, endpoint_url: str | None = None) -> None:
    """Remove everything of a run (deletePolicy: Delete)."""
    store = _store(prefix, run_id, endpoint_url)
    store.fs().delete_tree(store.root)
