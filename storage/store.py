"""`CheckpointStore`: the one object the train loop, the operator and the CLI use.

It binds a run root (`<prefix>/<run-id>`), the attempt number and the storage
options, and rebuilds its filesystem every few minutes (see `fs()`). The protocol itself lives in
commit.py (write), reader.py (read), verify.py and retention.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import transfer
from .commit import CheckpointWriter, clear_uncommitted_step, commit_step
from .errors import CheckpointCorruptError, CheckpointNotFoundError, PreconditionFailedError, StorageError
from .layout import MANIFEST_NAME, RunLayout, locate
from .manifest import FORMAT_VERSION, CommitMetadata, FileEntry, Manifest, WriterRecord
from .objectfs import ObjectFS
from .options import StorageOptions
from .reader import (
    StepFolder,
    read_manifest,
    read_pointer,
    read_rollbacks,
    scan,
    set_pointer,
    size_problems,
    update_pointer,
)
from .reader import committed as committed_manifests
from .reader import latest as latest_manifest
from .retention import (
    CheckpointSummary,
    PartialFolder,
    RetentionPlan,
    RetentionPolicy,
    plan_partial_gc,
    plan_retention,
)
from .rollback import Rollback, RollbackLog, plan_rollback
from .shared_fs import SharedFs
from .uri import join as uri_join
from .uri import scheme as uri_scheme
from .verify import VerifyReport
from .verify import verify as verify_manifest


@dataclass(frozen=True)
class CheckpointInfo:
    """A committed checkpoint."""

    step: int
    uri: str  # the step folder
    manifest: Manifest


class CheckpointStore:
    """Checkpoints of one run under `<prefix>/<run_id>` (see the package docstring for the API tour)."""

    def __init__(
        self,
        prefix: str,
        run_id: str,
        *,
        attempt: int = 0,
        options: StorageOptions | None = None,
        shared: SharedFs | None = None,
    ):
        """`shared`: a filesystem this store shares with others (shared_fs.py), whose options are
        the store's (so `options` is not given with it). Without it the store builds its own."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        self.layout = RunLayout.for_run(prefix, run_id)
        self.attempt = attempt
        if shared is not None and options is not None:
            raise ValueError("give a store options or a shared filesystem (which has its own), not both")
        if shared is not None and shared.scheme != uri_scheme(self.layout.root):
            raise ValueError(f"a {shared.scheme}:// filesystem cannot serve {self.layout.root}")
        self._shared = shared or SharedFs(self.layout.root, options)
        self.options = self._shared.options

    @classmethod
    def from_uri(
        cls, run_uri: str, *, attempt: int = 0, options: StorageOptions | None = None
    ) -> CheckpointStore:
        """From the run root itself (or any URI below it, e.g. a step folder)."""
        layout, _ = locate(run_uri)
        prefix, run_id = layout.root.rsplit("/", 1)
        return cls(prefix, run_id, attempt=attempt, options=options)

    @property
    def root(self) -> str:
        return self.layout.root

    @property
    def run_id(self) -> str:
        return self.layout.run_id

    def fs(self) -> ObjectFS:
        """The filesystem, rebuilt once older than `options.fs_max_age_s` (shared_fs.py).

        Building an S3 client costs ~0.5 s of CPU (botocore loads the service
        model), too much per `latest()`, while caching it for days is what let
        credentials go stale in ray#35524; minutes is the compromise, and a
        checkpoint interval is normally longer, so each save gets a fresh one.
        """
        return self._shared.get()

    # -- writing --------------------------------------------------------------
    def prepare(self, step: int) -> bool:
        """Rank 0, before the save barrier: make `step`'s folder writable again.

        A rolled-back checkpoint of this step is archived first (moved, never deleted; see
        rollback.py), then whatever a dead attempt left there is removed.
        """
        fs = self.fs()
        # One LIST decides the common case (nothing there: a new step) without a HEAD or GET.
        if not (files := fs.list_files(self.layout.step_dir(step))):
            return False
        if MANIFEST_NAME in files:
            self._archive_rolled_back(fs, step)
        return clear_uncommitted_step(fs, self.layout, step)

    def writer(
        self, step: int, rank: int = 0, num_writers: int = 1, progress: transfer.ProgressHook | None = None
    ) -> CheckpointWriter:
        """A writer for this rank's files of `step` (see commit.CheckpointWriter)."""
        return CheckpointWriter(self.fs(), self.layout, step, rank, num_writers, self.attempt, progress)

    def commit(
        self,
        step: int,
        num_writers: int = 1,
        metadata: CommitMetadata | dict[str, Any] | None = None,
        writers: Iterable[WriterRecord] | None = None,
        wait_s: float = 0.0,
    ) -> CheckpointInfo:
        """Write the manifest once all `num_writers` writers of this attempt finished; move latest.json.

        `writers`: the records returned by each rank's `finish()` (e.g. via
        `gather_object`); when None they are read from the store, waiting up to
        `wait_s` seconds for late ones.
        """
        fs = self.fs()
        manifest = commit_step(
            fs, self.layout, step, num_writers, self.attempt, CommitMetadata.coerce(metadata),
            list(writers) if writers is not None else None, wait_s,
        )  # fmt: skip
        update_pointer(fs, self.layout, manifest)
        return self._info(manifest)

    def save(
        self,
        step: int,
        local_dir: str,
        metadata: CommitMetadata | dict[str, Any] | None = None,
        progress: transfer.ProgressHook | None = None,
    ) -> CheckpointInfo:
        """Single-writer shortcut: upload `local_dir` and commit it as `step`."""
        self.prepare(step)
        with self.writer(step, 0, 1, progress) as writer:
            writer.upload_dir(local_dir)
        return self.commit(step, 1, metadata, [writer.finish()])

    # -- reading --------------------------------------------------------------
    def latest(self, check_sizes: bool = True) -> CheckpointInfo | None:
        """The newest committed checkpoint whose files exist with their sizes; None if there is none."""
        manifest = latest_manifest(self.fs(), self.layout, check_sizes)
        return None if manifest is None else self._info(manifest)

    def committed(self) -> list[CheckpointInfo]:
        """Every committed checkpoint, ascending by step."""
        return [self._info(m) for m in committed_manifests(self.fs(), self.layout)]

    def scan(self) -> list[StepFolder]:
        """Every step folder, committed or not (for `ckpt ls` and gc)."""
        return scan(self.fs(), self.layout)

    def get(self, step: int) -> CheckpointInfo:
        manifest = read_manifest(self.fs(), self.layout, step)
        if manifest is None:
            raise CheckpointNotFoundError(
                f"no committed checkpoint at {self.layout.step_dir(step)}", self.layout.step_dir(step)
            )
        return self._info(manifest)

    def verify(self, step: int | None = None, checksums: bool | None = None) -> VerifyReport:
        """Re-check sizes (and sha256 unless `checksums=False`) of `step`, default the latest committed."""
        fs = self.fs()
        manifest = self._resolve(fs, step)
        return verify_manifest(
            fs, self.layout, manifest, self.options.verify_checksums if checksums is None else checksums
        )

    def download(
        self,
        step: int | None,
        local_dir: str,
        ranks: Iterable[int] | None = None,
        select: Callable[[FileEntry], bool] | None = None,
        progress: transfer.ProgressHook | None = None,
    ) -> CheckpointInfo:
        """Download `step` (None: the latest) into `local_dir`: files of `ranks` (all by default)
        that `select` accepts, plus a copy of manifest.json. Sizes and sha256 are checked."""
        fs = self.fs()
        manifest = self._resolve(fs, step)
        wanted = manifest.files_of(None if ranks is None else set(ranks))
        wanted = tuple(e for e in wanted if select is None or select(e))
        etags = _listed_etags(fs, self.layout, manifest, len(wanted))
        items = [
            transfer.TransferItem(
                os.path.join(local_dir, *e.path.split("/")),
                self.layout.file(manifest.step, e.path),
                e.size,
                e.sha256,
                etags.get(e.path),
                part_size=e.part_size,
            )
            for e in wanted
        ]
        os.makedirs(local_dir, exist_ok=True)
        transfer.download(fs, items, progress)
        with open(os.path.join(local_dir, "manifest.json"), "wb") as f:
            f.write(manifest.to_json())
        return self._info(manifest)

    # -- rollback -------------------------------------------------------------
    def rollbacks(self) -> RollbackLog:
        """Every rollback of this run, oldest first."""
        return read_rollbacks(self.fs(), self.layout)

    def rollback(self, to_step: int, reason: str = "") -> Rollback:
        """Mark every committed checkpoint newer than `to_step` as rolled back (nothing is deleted).

        `to_step` must be a committed checkpoint whose files check out. Afterwards `latest()` is
        `to_step` and `latest.json` points there. Only while no attempt of the run is writing:
        a live writer would keep committing past the rollback.
        """
        fs = self.fs()
        for _ in range(3):
            body, etag = self._read_log(fs)
            log = RollbackLog() if body is None else RollbackLog.from_json(body, self.layout.rollbacks)
            manifests = committed_manifests(fs, self.layout)
            updated = plan_rollback(manifests, log, to_step, reason)
            target = next(m for m in manifests if m.step == to_step)
            problems = size_problems(fs, self.layout, target)
            if problems:
                raise CheckpointCorruptError(
                    f"cannot roll back to {self.layout.step_dir(to_step)}: {'; '.join(problems[:3])}",
                    self.layout.step_dir(to_step),
                    problems,
                )
            try:
                fs.write_bytes(
                    self.layout.rollbacks, updated.to_json(), create_only=body is None, if_match=etag
                )
            except (FileExistsError, PreconditionFailedError):
                continue  # another rollback landed in between: plan again on what it wrote
            set_pointer(fs, self.layout, target)
            return updated.rollbacks[-1]
        raise StorageError(
            f"{self.layout.rollbacks} kept changing; try the rollback again", self.layout.rollbacks
        )

    def _read_log(self, fs: ObjectFS) -> tuple[bytes | None, str | None]:
        try:
            etag = fs.etag(self.layout.rollbacks)
            return fs.read_bytes(self.layout.rollbacks), etag
        except FileNotFoundError:
            return None, None

    def _archive_rolled_back(self, fs: ObjectFS, step: int) -> str | None:
        """Move a rolled-back checkpoint of `step` out of the way of a new commit; its archive URI."""
        try:
            manifest = read_manifest(fs, self.layout, step)
        except (CheckpointCorruptError, ValueError):
            return None  # not a checkpoint anyone reads; the commit protocol decides what to do
        log = read_rollbacks(fs, self.layout)
        if manifest is None or not log.is_rolled_back(manifest):
            return None
        src, dest = self.layout.step_dir(step), self.layout.archive_dir(step, manifest.commit_id)
        files = fs.list_files(src)
        # The manifest goes last: an archive without one is an interrupted copy, simply redone.
        for rel in sorted(files, key=lambda r: r == MANIFEST_NAME):
            fs.copy_file(uri_join(src, rel), uri_join(dest, rel))
        for _ in range(3):
            body, etag = self._read_log(fs)
            current = RollbackLog() if body is None else RollbackLog.from_json(body, self.layout.rollbacks)
            try:
                fs.write_bytes(
                    self.layout.rollbacks,
                    current.with_archive(step, manifest.commit_id, dest).to_json(),
                    if_match=etag,
                )
                break
            except PreconditionFailedError:
                continue
        fs.delete_file(self.layout.manifest(step))  # from here on the folder is an ordinary partial one
        fs.delete_tree(src)
        return dest

    # -- retention ------------------------------------------------------------
    def apply_retention(self, policy: RetentionPolicy, dry_run: bool = False) -> RetentionPlan:
        """Delete committed checkpoints the policy does not keep (manifest first, then files)."""
        fs = self.fs()
        manifests = committed_manifests(fs, self.layout)
        pointer = read_pointer(fs, self.layout)
        plan = plan_retention(
            [CheckpointSummary.of(m) for m in manifests], policy, [] if pointer is None else [pointer]
        )
        if not dry_run:
            for step in plan.delete:
                fs.delete_file(self.layout.manifest(step))  # from here on it is not committed
                fs.delete_tree(self.layout.step_dir(step))
        return plan

    def clean_partial(self, grace_s: float, dry_run: bool = False) -> tuple[int, ...]:
        """Delete uncommitted step folders whose newest object is older than `grace_s` seconds."""
        fs = self.fs()
        partials = [PartialFolder(f.step, f.newest_mtime) for f in scan(fs, self.layout) if f.partial]
        victims = plan_partial_gc(partials, time.time(), grace_s)
        if not dry_run:
            for step in victims:
                fs.delete_tree(self.layout.step_dir(step))
        return victims

    # -- run files ------------------------------------------------------------
    def write_run_config(self, text: str) -> str:
        """Store the resolved run config (YAML text); return its sha256 (the manifests' config_hash)."""
        self.fs().write_bytes(self.layout.run_config, text.encode())
        return hashlib.sha256(text.encode()).hexdigest()

    def read_run_config(self) -> str | None:
        try:
            return self.fs().read_bytes(self.layout.run_config).decode()
        except FileNotFoundError:
            return None

    def write_progress(self, data: bytes) -> None:
        """Overwrite the run's progress record (`progress.json`) in one piece (ObjectFS.replace_bytes)."""
        self.fs().replace_bytes(self.layout.progress, data)

    def read_progress(self) -> bytes | None:
        """The progress record's bytes (one GET), or None when the job has not written one."""
        try:
            return self.fs().read_bytes(self.layout.progress)
        except FileNotFoundError:
            return None

    def write_run_manifest(
        self, code_version: str | None = None, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record this attempt in `run.json` (run id, config hash, code version, attempts),
        merging what is there."""
        fs = self.fs()
        body = self.read_run_manifest() or {
            "format_version": FORMAT_VERSION,
            "run_id": self.run_id,
            "created_at": time.time(),
        }
        config = self.read_run_config()
        body["config_hash"] = None if config is None else hashlib.sha256(config.encode()).hexdigest()
        if code_version is not None:
            body["code_version"] = code_version
        body["attempts"] = sorted(set(body.get("attempts", [])) | {self.attempt})
        body["extra"] = {**body.get("extra", {}), **(extra or {})}
        body["updated_at"] = time.time()
        fs.write_bytes(self.layout.run_manifest, json.dumps(body, sort_keys=True, indent=1).encode())
        return body

    def read_run_manifest(self) -> dict[str, Any] | None:
        """`run.json` (None when absent); CheckpointCorruptError when it is not a JSON object."""
        uri = self.layout.run_manifest
        try:
            body = json.loads(self.fs().read_bytes(uri))
        except FileNotFoundError:
            return None
        except ValueError as err:  # not UTF-8, or not JSON
            raise CheckpointCorruptError(f"{uri} is not valid JSON: {err}", uri, [uri]) from err
        if not isinstance(body, dict):
            raise CheckpointCorruptError(f"{uri} is not a JSON object", uri, [uri])
        return body

    # -- helpers --------------------------------------------------------------
    def _resolve(self, fs: ObjectFS, step: int | None) -> Manifest:
        if step is None:
            manifest = latest_manifest(fs, self.layout)
            if manifest is None:
                raise CheckpointNotFoundError(
                    f"no committed checkpoint under {self.layout.checkpoints}", self.layout.checkpoints
                )
            return manifest
        manifest = read_manifest(fs, self.layout, step)
        if manifest is None:
            raise CheckpointNotFoundError(
                f"no committed checkpoint at {self.layout.step_dir(step)}", self.layout.step_dir(step)
            )
        return manifest

    def _info(self, manifest: Manifest) -> CheckpointInfo:
        return CheckpointInfo(manifest.step, self.layout.step_dir(manifest.step), manifest)


def _listed_etags(fs: ObjectFS, layout: RunLayout, manifest: Manifest, wanted: int) -> dict[str, str]:
    """The ETags of a step's objects from one listing, when it costs fewer requests than the
    HeadObject per file it spares (s3transfer needs size and ETag to skip it); else none."""
    objects = len(manifest.files) + manifest.num_writers + 1  # the files, writer records, manifest
    if fs.scheme != "s3" or math.ceil(objects / 1000) >= wanted:  # LIST pages hold 1,000 keys
        return {}
    listed = fs.list_files(layout.step_dir(manifest.step))
    return {rel: f'"{info.etag}"' for rel, info in listed.items() if info.etag}  # quoted, as S3 sends it
