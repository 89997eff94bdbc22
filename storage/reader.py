"""Reading a run's checkpoints: which are committed, and which is the latest good one
(docs/storage.md, "Reading: the latest good checkpoint").

A step folder without `manifest.json` is never read. `latest()` is the newest
committed step whose listed objects exist with their listed sizes; the
`latest.json` pointer only says where to look first. Because a commit can die
between its manifest and the pointer, the folder listing is still consulted
for anything newer than the pointer, so a stale pointer never hides a newer
commit and a pointer to a damaged checkpoint never wins. A commit the rollback log
(`rollbacks.json`, rollback.py) lists is still a folder with a manifest, but it does not
count: `latest()` and `committed()` skip it, `scan()` shows it as rolled back.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from . import uri as uri_mod
from .errors import CheckpointCorruptError, PreconditionFailedError, StorageError
from .layout import RunLayout, parse_step_name
from .manifest import FORMAT_VERSION, Manifest
from .objectfs import ObjectFS
from .rollback import RollbackLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepFolder:
    step: int
    uri: str
    manifest: Manifest | None  # None: uncommitted (partial, or being written)
    newest_mtime: float | None = None  # of any object inside; filled for uncommitted folders only
    error: str | None = None  # the manifest exists but cannot be read
    num_files: int = 0  # objects inside; filled for uncommitted folders only
    total_bytes: int = 0
    rolled_back: bool = False  # committed, but listed in the rollback log: it does not count

    @property
    def committed(self) -> bool:
        """Committed and counting (a rolled-back folder has a manifest but does not count)."""
        return self.manifest is not None and not self.rolled_back

    @property
    def partial(self) -> bool:
        """No manifest: being written, or left by a dead attempt."""
        return self.manifest is None


def step_numbers(fs: ObjectFS, layout: RunLayout) -> list[int]:
    """Steps that have a folder, ascending (one LIST request)."""
    steps = (parse_step_name(o.name) for o in fs.list_dir(layout.checkpoints) if o.is_dir)
    return sorted(s for s in steps if s is not None)


def read_rollbacks(fs: ObjectFS, layout: RunLayout) -> RollbackLog:
    """The run's rollback log (empty when it was never rolled back);
    CheckpointCorruptError when unreadable."""
    try:
        return RollbackLog.from_json(fs.read_bytes(layout.rollbacks), layout.rollbacks)
    except FileNotFoundError:
        return RollbackLog()


def scan(fs: ObjectFS, layout: RunLayout, with_mtimes: bool = True) -> list[StepFolder]:
    """Every step folder, ascending, with its manifest when it has one (rolled back or not)."""
    steps = step_numbers(fs, layout)
    rollbacks = read_rollbacks(fs, layout)
    blobs = fs.read_many([layout.manifest(s) for s in steps])
    out = []
    for step in steps:
        uri = layout.manifest(step)
        manifest, error = None, None
        if uri in blobs:
            try:
                manifest = Manifest.from_json(blobs[uri], uri)
            except (CheckpointCorruptError, ValueError) as err:
                error = str(err)
        mtime, num_files, total_bytes = None, 0, 0
        if manifest is None and with_mtimes:
            objects = fs.list_files(layout.step_dir(step)).values()
            mtime = max((o.mtime for o in objects if o.mtime is not None), default=None)
            num_files, total_bytes = len(objects), sum(o.size for o in objects)
        rolled_back = manifest is not None and rollbacks.is_rolled_back(manifest)
        out.append(
            StepFolder(
                step, layout.step_dir(step), manifest, mtime, error, num_files, total_bytes, rolled_back
            )
        )
    return out


def committed(fs: ObjectFS, layout: RunLayout) -> list[Manifest]:
    """Manifests of the committed checkpoints that count (not rolled back), ascending (sizes not checked)."""
    return [f.manifest for f in scan(fs, layout, with_mtimes=False) if f.committed and f.manifest is not None]


def read_manifest(fs: ObjectFS, layout: RunLayout, step: int) -> Manifest | None:
    uri = layout.manifest(step)
    try:
        return Manifest.from_json(fs.read_bytes(uri), uri)
    except FileNotFoundError:
        return None


def size_problems(fs: ObjectFS, layout: RunLayout, manifest: Manifest) -> list[str]:
    """One line per listed file that is missing or has another size (one LIST request)."""
    present = fs.list_files(layout.step_dir(manifest.step))
    problems = []
    for entry in manifest.files:
        found = present.get(entry.path)
        uri = layout.file(manifest.step, entry.path)
        if found is None:
            problems.append(f"{uri}: missing")
        elif found.size != entry.size:
            problems.append(f"{uri}: size {found.size}, manifest says {entry.size}")
    return problems


def latest(fs: ObjectFS, layout: RunLayout, check_sizes: bool = True) -> Manifest | None:
    """The newest committed checkpoint that checks out and is not rolled back, or None."""
    rollbacks = read_rollbacks(fs, layout)
    pointer = read_pointer(fs, layout)
    steps = step_numbers(fs, layout)
    if pointer is not None and pointer in steps:
        # Newer folders first (a commit may have died before moving the pointer), then the pointer's.
        order = [s for s in reversed(steps) if s >= pointer] + [s for s in reversed(steps) if s < pointer]
    else:
        order = list(reversed(steps))
    for step in order:
        try:
            manifest = read_manifest(fs, layout, step)
        except (CheckpointCorruptError, ValueError) as err:
            log.warning("skipping %s: %s", layout.step_dir(step), err)
            continue
        if manifest is None:
            continue
        if rollbacks.is_rolled_back(manifest):
            continue  # marked by a rollback: kept, but not part of the run's history any more
        problems = size_problems(fs, layout, manifest) if check_sizes else []
        if not problems:
            return manifest
        log.warning("skipping %s: %s", layout.step_dir(step), "; ".join(problems[:3]))
    return None


def read_pointer(fs: ObjectFS, layout: RunLayout) -> int | None:
    """The step `latest.json` names, or None when absent or unreadable."""
    try:
        body = json.loads(fs.read_bytes(layout.latest))
        return int(body["step"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as err:
        log.warning("ignoring unreadable %s: %s", layout.latest, err)
        return None


def _pointer_body(layout: RunLayout, manifest: Manifest) -> bytes:
    return json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "step": manifest.step,
            "path": uri_mod.relative(layout.step_dir(manifest.step), layout.root),
            "commit_id": manifest.commit_id,
            "updated_at": time.time(),
        },
        sort_keys=True,
    ).encode()


def set_pointer(fs: ObjectFS, layout: RunLayout, manifest: Manifest) -> None:
    """Point `latest.json` at `manifest`, backwards too (a rollback); readers never depend on it."""
    try:
        fs.write_bytes(layout.latest, _pointer_body(layout, manifest))
    except StorageError as err:
        log.warning("could not update %s (readers fall back to listing): %s", layout.latest, err)


def update_pointer(fs: ObjectFS, layout: RunLayout, manifest: Manifest) -> bool:
    """Move `latest.json` forward to `manifest` (never backwards). Best effort: False on failure."""
    body = _pointer_body(layout, manifest)
    for _ in range(3):
        try:
            etag = fs.etag(layout.latest)  # compare-and-swap on S3: nobody moved it since we looked
        except FileNotFoundError:
            etag = None
        except StorageError:
            etag = None
        current = read_pointer(fs, layout)
        if current is not None and current > manifest.step:
            return True
        try:
            fs.write_bytes(layout.latest, body, create_only=current is None and etag is None, if_match=etag)
            return True
        except (FileExistsError, PreconditionFailedError):
            continue  # someone moved it in between: look again
        except StorageError as err:
            log.warning("could not update %s (readers fall back to listing): %s", layout.latest, err)
            return False
    return False
