"""sphinxx.storage: checkpoints of a run as directories of files under a URI, committed atomically.

It knows nothing of torch, Ray or Kubernetes (import-linter enforces it): the
trainer hands it files, or bytes held in memory (`CheckpointWriter.upload_bytes`), this
package ships them to `s3://`, `file://` or `memory://` and makes "complete" a fact you
can check. Design: docs/storage.md.

Layout (layout.py): `<prefix>/<run-id>/checkpoints/step-000012000/...`, the
commit marker `manifest.json` written last, `checkpoints/latest.json` as a hint,
and `config.yaml` / `run.json` beside `checkpoints/`.

The API the training job and the operator use::

    from sphinxx.storage import CheckpointStore, CommitMetadata, RetentionPolicy, StorageOptions

    store = CheckpointStore("s3://bucket/sweeps/sweep-a", run_id, attempt=attempt)
    # endpoint/region/credentials: StorageOptions(...) or the environment
    # (AWS_ENDPOINT_URL, AWS_PROFILE, IRSA)

    # start of an attempt (rank 0): remove what a dead attempt left behind
    store.clean_partial(grace_s=0)
    info = store.latest()                      # CheckpointInfo(step, uri, manifest) or None
    if info: store.download(info.step, local_dir, ranks={rank})   # sizes + sha256 checked

    # every checkpoint interval
    store.prepare(step)                        # rank 0, then barrier
    with store.writer(step, rank, num_writers) as w:      # every rank
        w.upload_dir(local_shard_dir)          # parallel multipart; progress= hook
        w.upload_bytes([(blob, "optim/rank-00000.pt")])   # or bytes from memory, the same parts
    record = w.finish()                        # (the with-block already called it)
    records = gather_object(record)            # or let commit read them from the store
    info = store.commit(step, num_writers, metadata=CommitMetadata(
        world_size=..., zero_stage=..., ep_size=..., dp_size=..., metrics={"val_loss": 2.3},
        config_hash=..., code_version=..., final=False), writers=records)   # rank 0, after a barrier
    store.apply_retention(RetentionPolicy(keep_last=3, keep_best=1, metric="val_loss",
                                          milestone_every=10_000))

    # operator / tools
    store.committed()                          # [CheckpointInfo], ascending
    store.rollback(to_step, reason)            # newer commits stop counting (kept; rollback.py)
    store.verify(step).raise_for_problems()    # sizes and sha256, failures name the file
    store.write_run_config(yaml_text); store.read_run_config(); store.write_run_manifest(code_version=...)

Guarantees: `latest()` and `committed()` never return a step without a
manifest; a manifest exists only after every expected writer of this attempt
finished and every listed object exists with its size; a writer cannot write
into a committed step (CheckpointAlreadyCommittedError); retention never
deletes the newest committed checkpoint and deletes a victim's manifest before
its files. Errors name the URI (errors.py). The CLI is `sphinxx ckpt`
(cli.py).

Modules (no cycle among them, and none imports the package: import-linter, pyproject.toml):

    uri.py          string URIs (`s3://`, `file://`, `memory://`): scheme, join, normalize
    layout.py       every URI of a run under its prefix; `locate` for a pasted URI (no I/O)
    options.py      `StorageOptions` (endpoint, retries, timeouts, concurrency) and `MiB`
    errors.py       the errors, each naming its URI; `guard` turns client failures into them
    clients.py      builds the S3 clients (s3fs and boto3), the only place that does
    objectfs.py     `ObjectFS`, the URI-in, bytes-out seam over fsspec, and `open_fs`
    listing.py      `ObjectInfo` from fsspec and S3 listing entries; ListObjectsV2 paging
    conditional.py  create-once and compare-and-swap writes of small objects
    s3bulk.py       whole-file S3 transfers through boto3's s3transfer
    transfer.py     many files at once: parallel, bounded memory, progress, retries, deadline
    hashing.py      sha256 of files, after the fact or while a download writes them; ETags
    threads.py      a thread pool whose threads never hold the process open
    manifest.py     the manifest and writer records: the JSON format of a checkpoint
    commit.py       the multi-writer commit protocol: writers, their records, the manifest
    reader.py       which checkpoints are committed, the latest good one, `latest.json`
    rollback.py     the rollback log: newer commits stop counting, without being deleted
    retention.py    which checkpoints to keep: pure decisions over committed manifests
    verify.py       re-check a committed checkpoint's sizes and sha256
    store.py        `CheckpointStore`, the one object its users call
    stage.py        node-local staging of read-only inputs (weights, tokenizers)
    probe.py        can these URIs be read or written with the credentials at hand
    cli.py          `sphinxx ckpt`: ls, latest, verify, gc, rollback
"""

from .commit import CheckpointWriter
from .errors import (
    CheckpointAlreadyCommittedError,
    CheckpointCorruptError,
    CheckpointNotFoundError,
    IncompleteCheckpointError,
    StorageAccessError,
    StorageError,
    StorageTimeoutError,
)
from .layout import RunLayout, locate, step_name
from .manifest import CommitMetadata, FileEntry, Manifest, WriterRecord
from .objectfs import ObjectFS, open_fs
from .options import StorageOptions
from .reader import StepFolder
from .retention import CheckpointSummary, RetentionPlan, RetentionPolicy, plan_partial_gc, plan_retention
from .rollback import Rollback, RollbackLog, RolledBackStep
from .store import CheckpointInfo, CheckpointStore
from .transfer import TransferProgress
from .verify import VerifyReport

__all__ = [
    "CheckpointAlreadyCommittedError",
    "CheckpointCorruptError",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CheckpointStore",
    "CheckpointSummary",
    "CheckpointWriter",
    "CommitMetadata",
    "FileEntry",
    "IncompleteCheckpointError",
    "Manifest",
    "ObjectFS",
    "RetentionPlan",
    "RetentionPolicy",
    "Rollback",
    "RollbackLog",
    "RolledBackStep",
    "RunLayout",
    "StepFolder",
    "StorageAccessError",
    "StorageError",
    "StorageOptions",
    "StorageTimeoutError",
    "TransferProgress",
    "VerifyReport",
    "WriterRecord",
    "locate",
    "open_fs",
    "plan_partial_gc",
    "plan_retention",
    "step_name",
]
