"""Re-check a committed checkpoint against its manifest: every file's size, and its sha256.

Sizes cost one LIST; checksums read every byte (in parallel, streaming, bounded
memory), so `verify_checksums` is the knob. A failure names each bad file, the
thing an operator needs to decide between "re-run verify" and "resume from
the previous checkpoint".
"""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass

from .errors import CheckpointCorruptError, StorageError
from .hashing import Hasher
from .layout import RunLayout
from .manifest import FileEntry, Manifest
from .objectfs import ObjectFS
from .options import MiB
from .reader import size_problems


@dataclass(frozen=True)
class VerifyReport:
    step: int
    uri: str  # the step folder
    files_checked: int
    bytes_checked: int
    checksums: bool  # whether sha256 was checked, or sizes only
    problems: tuple[str, ...]  # one line per bad file, each naming its URI

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> VerifyReport:
        if self.problems:
            raise CheckpointCorruptError(
                f"checkpoint {self.uri} failed verification: " + "; ".join(self.problems),
                self.uri,
                list(self.problems),
            )
        return self


def verify(fs: ObjectFS, layout: RunLayout, manifest: Manifest, checksums: bool = True) -> VerifyReport:
    problems = size_problems(fs, layout, manifest)
    bad = {p.split(": ", 1)[0] for p in problems}
    if checksums:
        todo = [e for e in manifest.files if layout.file(manifest.step, e.path) not in bad]
        problems += _checksum_problems(fs, layout, manifest.step, todo)
    return VerifyReport(
        step=manifest.step,
        uri=layout.step_dir(manifest.step),
        files_checked=len(manifest.files),
        bytes_checked=manifest.total_bytes if checksums else 0,
        checksums=checksums,
        problems=tuple(sorted(problems)),
    )


def _checksum_problems(fs: ObjectFS, layout: RunLayout, step: int, entries: list[FileEntry]) -> list[str]:
    def one(entry: FileEntry) -> str | None:
        uri = layout.file(step, entry.path)
        try:
            digest = _digest_object(fs, uri, entry.digest.new_hasher())
        except FileNotFoundError:
            return f"{uri}: missing"
        except (StorageError, OSError) as err:
            return f"{uri}: unreadable ({err})"
        return (
            None
            if digest == entry.sha256
            else f"{uri}: sha256 {digest[:12]}..., manifest says {entry.sha256[:12]}..."
        )

    if not entries:
        return []
    with cf.ThreadPoolExecutor(max_workers=min(fs.options.file_concurrency, len(entries))) as pool:
        return [p for p in pool.map(one, entries) if p is not None]


def _digest_object(fs: ObjectFS, uri: str, digest: Hasher) -> str:
    """The object's digest of the kind its manifest entry records (whole file or part tree)."""
    with fs.open_read(uri) as stream:
        while block := stream.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()
