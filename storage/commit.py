"""The multi-writer commit protocol (docs/storage.md, "Commit protocol").

1. (rank 0, before a barrier) `clear_uncommitted_step` removes a step folder a
   dead attempt left without a manifest.
2. Every rank opens a `CheckpointWriter(step, rank, num_writers)`, uploads its
   files (recording path, size, sha256) and calls `finish()`, which writes its
   writer record `_writers/rank-RRRRR.json`.
3. After a barrier, rank 0 calls `commit_step`: it reads the writer records of
   this attempt (or takes the ones gathered with `gather_object`), refuses if
   any rank is missing, checks that every listed object exists with its size,
   and only then writes `manifest.json` - the last object, with a create-once
   PUT where the store supports it - and reads it back.
4. It then moves `latest.json` forward (an optimisation; see reader.py).

Write-once: a writer refuses to start, upload or finish once the step has a
manifest, so a late (third, zombie, retried) writer cannot change a committed
checkpoint; files it may still have in flight are not in the manifest, and
`verify` catches any overwrite by size and sha256.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Sequence
from types import TracebackType

from . import transfer
from .errors import CheckpointAlreadyCommittedError, CheckpointCorruptError, IncompleteCheckpointError
from .hashing import FileDigest
from .layout import RunLayout, checkpoint_relpath
from .manifest import CommitMetadata, FileEntry, Manifest, WriterRecord
from .objectfs import ObjectFS


class CheckpointWriter:
    """One writer (normally one rank) of one checkpoint step. Use as a context manager:
    a clean exit calls `finish()`; an exception leaves the step uncommitted."""

    def __init__(
        self,
        fs: ObjectFS,
        layout: RunLayout,
        step: int,
        rank: int,
        num_writers: int,
        attempt: int = 0,
        progress: transfer.ProgressHook | None = None,
    ):
        if num_writers < 1 or not 0 <= rank < num_writers:
            raise ValueError(
                f"writer rank {rank} is outside 0..{num_writers - 1} (num_writers={num_writers})"
            )
        self.fs, self.layout, self.step = fs, layout, step
        self.rank, self.num_writers, self.attempt = rank, num_writers, attempt
        self.progress = progress
        self.writer_id = uuid.uuid4().hex
        self._files: dict[str, FileEntry] = {}
        self._record: WriterRecord | None = None
        self._check_open()

    @property
    def uri(self) -> str:
        return self.layout.step_dir(self.step)

    @property
    def files(self) -> tuple[FileEntry, ...]:
        return tuple(self._files.values())

    def upload_dir(self, local_dir: str, dest: str = "") -> list[FileEntry]:
        """Upload every file under `local_dir` to `<step>/<dest>/<relative path>`."""
        if not os.path.isdir(local_dir):
            raise ValueError(f"{local_dir!r} is not a directory")
        pairs = []
        for here, dirs, names in os.walk(local_dir):
            dirs.sort()
            for name in sorted(names):
                local = os.path.join(here, name)
                rel = os.path.relpath(local, local_dir).replace(os.sep, "/")
                pairs.append((local, f"{dest.strip('/')}/{rel}" if dest.strip("/") else rel))
        return self.upload_files(pairs)

    def upload_file(self, local_path: str, relpath: str) -> FileEntry:
        return self.upload_files([(local_path, relpath)])[0]

    def upload_files(self, pairs: Sequence[tuple[str, str]]) -> list[FileEntry]:
        """Upload (local path, name inside the checkpoint) pairs in parallel."""
        self._check_open()
        names = [checkpoint_relpath(rel) for _, rel in pairs]
        items = [
            transfer.TransferItem(local, self.layout.file(self.step, rel), os.path.getsize(local))
            for (local, _), rel in zip(pairs, names, strict=True)
        ]
        return self._record_uploads(names, items, transfer.upload(self.fs, items, self.progress))

    def _record_uploads(
        self, names: list[str], items: list[transfer.TransferItem], digests: list[FileDigest]
    ) -> list[FileEntry]:
        entries = [
            FileEntry(rel, it.size, d.sha256, self.rank, d.part_size)
            for rel, it, d in zip(names, items, digests, strict=True)
        ]
        self._files.update((e.path, e) for e in entries)
        return entries

    def upload_bytes(self, pairs: Sequence[tuple[bytes, str]]) -> list[FileEntry]:
        """Upload (bytes in memory, name inside the checkpoint) pairs in parallel, exactly as
        `upload_files` uploads files of those bytes: the same parts, sizes and digests."""
        self._check_open()
        names = [checkpoint_relpath(rel) for _, rel in pairs]
        items = [
            transfer.TransferItem(f"<memory: {rel}>", self.layout.file(self.step, rel), len(data), data=data)
            for (data, _), rel in zip(pairs, names, strict=True)
        ]
        return self._record_uploads(names, items, transfer.upload(self.fs, items, self.progress))

    def write_bytes(self, relpath: str, data: bytes) -> FileEntry:
        """Write one small object directly (e.g. RNG or sampler state)."""
        self._check_open()
        rel = checkpoint_relpath(relpath)
        self.fs.write_bytes(self.layout.file(self.step, rel), data)
        entry = FileEntry(rel, len(data), hashlib.sha256(data).hexdigest(), self.rank)
        self._files[rel] = entry
        return entry

    def finish(self) -> WriterRecord:
        """Record what this writer wrote; after this the committer may count it."""
        if self._record is not None:
            return self._record
        self._check_open()
        record = WriterRecord(
            self.step, self.rank, self.num_writers, self.attempt, self.writer_id,
            tuple(sorted(self._files.values(), key=lambda f: f.path)), time.time(),
        )  # fmt: skip
        self.fs.write_bytes(self.layout.writer_record(self.step, self.rank), record.to_json())
        self._record = record
        return record

    def _check_open(self) -> None:
        if self._record is not None:
            raise ValueError(f"writer rank {self.rank} of {self.uri} already finished; open a new writer")
        if self.fs.exists(self.layout.manifest(self.step)):
            raise CheckpointAlreadyCommittedError(
                f"{self.uri} is already committed; rank {self.rank} may not write into it "
                "(checkpoints are write-once)",
                self.uri,
            )

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.finish()


def clear_uncommitted_step(fs: ObjectFS, layout: RunLayout, step: int) -> bool:
    """Delete `step`'s folder if a dead attempt left it without a manifest. True if something was removed."""
    if fs.exists(layout.manifest(step)):
        raise CheckpointAlreadyCommittedError(
            f"{layout.step_dir(step)} is already committed", layout.step_dir(step)
        )
    if not fs.list_files(layout.step_dir(step)):
        return False
    fs.delete_tree(layout.step_dir(step))
    return True


def commit_step(
    fs: ObjectFS,
    layout: RunLayout,
    step: int,
    num_writers: int,
    attempt: int = 0,
    metadata: CommitMetadata | None = None,
    records: Sequence[WriterRecord] | None = None,
    wait_s: float = 0.0,
) -> Manifest:
    """Write the manifest of `step` once every writer has finished; return it."""
    step_uri = layout.step_dir(step)
    if fs.exists(layout.manifest(step)):
        raise CheckpointAlreadyCommittedError(f"{step_uri} is already committed", step_uri)
    if records is None:
        records = _wait_for_records(fs, layout, step, num_writers, attempt, wait_s)
    files = _merge_records(step_uri, records, num_writers)
    _check_objects(fs, layout, step, files)
    manifest = Manifest(
        run_id=layout.run_id, step=step, attempt=attempt, commit_id=uuid.uuid4().hex, created_at=time.time(),
        num_writers=num_writers, files=files, metadata=metadata or CommitMetadata(),
    )  # fmt: skip
    _write_manifest(fs, layout, manifest)
    return manifest


def _wait_for_records(
    fs: ObjectFS, layout: RunLayout, step: int, num_writers: int, attempt: int, wait_s: float
) -> list[WriterRecord]:
    deadline = time.monotonic() + wait_s
    while True:
        records = read_writer_records(fs, layout, step, attempt)
        if {r.rank for r in records} >= set(range(num_writers)) or time.monotonic() >= deadline:
            return [r for r in records if r.rank < num_writers and r.num_writers == num_writers]
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def read_writer_records(
    fs: ObjectFS, layout: RunLayout, step: int, attempt: int | None = None
) -> list[WriterRecord]:
    """The writer records in a step folder (only this attempt's, when given)."""
    uris = [
        f"{layout.writers_dir(step)}/{o.name}" for o in fs.list_dir(layout.writers_dir(step)) if not o.is_dir
    ]
    records = []
    for uri, data in fs.read_many(uris).items():
        try:
            record = WriterRecord.from_json(data, uri)
        except (CheckpointCorruptError, TypeError, KeyError):
            continue  # a torn or foreign record counts as a writer that did not finish
        if record.step == step and (attempt is None or record.attempt == attempt):
            records.append(record)
    return records


def _merge_records(step_uri: str, records: Sequence[WriterRecord], num_writers: int) -> tuple[FileEntry, ...]:
    by_rank = {r.rank: r for r in records}
    missing = sorted(set(range(num_writers)) - set(by_rank))
    if missing:
        raise IncompleteCheckpointError(
            f"cannot commit {step_uri}: writers {missing} of {num_writers} have not finished", step_uri
        )
    owner: dict[str, int] = {}
    for rank in range(num_writers):
        for entry in by_rank[rank].files:
            if entry.path in owner:
                raise IncompleteCheckpointError(
                    f"cannot commit {step_uri}: ranks {owner[entry.path]} and {rank} both wrote {entry.path}",
                    step_uri,
                )
            owner[entry.path] = rank
    return tuple(sorted((e for r in range(num_writers) for e in by_rank[r].files), key=lambda e: e.path))


def _check_objects(fs: ObjectFS, layout: RunLayout, step: int, files: Sequence[FileEntry]) -> None:
    present = fs.list_files(layout.step_dir(step))
    for entry in files:
        found = present.get(entry.path)
        if found is None or found.size != entry.size:
            uri = layout.file(step, entry.path)
            what = (
                "is missing" if found is None else f"has {found.size} bytes, the writer recorded {entry.size}"
            )
            raise IncompleteCheckpointError(f"cannot commit: {uri} {what}", uri)


def _write_manifest(fs: ObjectFS, layout: RunLayout, manifest: Manifest) -> None:
    uri = layout.manifest(manifest.step)
    try:
        fs.write_bytes(uri, manifest.to_json(), create_only=True)
    except FileExistsError:
        # Either a retried PUT whose first try landed (then it is ours), or a real second committer.
        pass
    stored = Manifest.from_json(fs.read_bytes(uri), uri)
    if stored.commit_id != manifest.commit_id:
        raise CheckpointAlreadyCommittedError(
            f"{layout.step_dir(manifest.step)} was committed by another committer (attempt {stored.attempt})",
            uri,
        )
