"""Errors of the checkpoint store, each naming the URI it is about.

Callers (the train loop, the operator, the CLI) need to tell three situations
apart: the store could not be reached or refused us (`StorageAccessError`), the
checkpoint protocol was violated (`CheckpointAlreadyCommittedError`,
`IncompleteCheckpointError`), or stored data does not match its manifest
(`CheckpointCorruptError`). All carry `.uri` so a log line or CLI message says
where to look.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class; `uri` is the object or folder the error is about."""

    def __init__(self, message: str, uri: str):
        super().__init__(message)
        self.uri = uri


class StorageAccessError(StorageError):
    """The store failed or refused a request after retries (permission, missing bucket, 5xx...)."""


class StorageTimeoutError(StorageAccessError):
    """A transfer did not finish within its deadline (a hung write fails the save, not the job)."""


class CheckpointAlreadyCommittedError(StorageError):
    """The step already has a manifest: checkpoints are write-once, late writers are rejected."""


class IncompleteCheckpointError(StorageError):
    """Commit refused: a writer has not finished, or a recorded file is missing or has the wrong size."""


class CheckpointCorruptError(StorageError):
    """Stored objects do not match the manifest; `problems` lists each file."""

    def __init__(self, message: str, uri: str, problems: list[str]):
        super().__init__(message, uri)
        self.problems = problems


class CheckpointNotFoundError(StorageError):
    """No committed checkpoint at the requested step (or none at all)."""
