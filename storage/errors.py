"""Errors of the checkpoint store, each naming the URI it is about.

Callers (the train loop, the operator, the CLI) need to tell three situations
apart: the store could not be reached or refused us (`StorageAccessError`), the
checkpoint protocol was violated (`CheckpointAlreadyCommittedError`,
`IncompleteCheckpointError`), or stored data does not match its manifest
(`CheckpointCorruptError`). All carry `.uri` so a log line or CLI message says
where to look: `guard` turns whatever the S3 client stack raised into a
`StorageAccessError` naming the URI the request was about.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class StorageError(Exception):
    """Base class; `uri` is the object or folder the error is about."""

    def __init__(self, message: str, uri: str):
        super().__init__(message)
        self.uri = uri

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        # Raised in Ray workers and unpickled by the driver: rebuilt from the constructor's arguments.
        return type(self), (self.args[0], self.uri)


class StorageAccessError(StorageError):
    """The store failed or refused a request after retries (permission, missing bucket, 5xx...)."""


class StorageTimeoutError(StorageAccessError):
    """A transfer did not finish within its deadline (a hung write fails the save, not the job)."""


class PreconditionFailedError(StorageError):
    """An If-Match write lost a race (someone else changed the object)."""


class CheckpointAlreadyCommittedError(StorageError):
    """The step already has a manifest: checkpoints are write-once, late writers are rejected."""


class IncompleteCheckpointError(StorageError):
    """Commit refused: a writer has not finished, or a recorded file is missing or has the wrong size."""


class CheckpointCorruptError(StorageError):
    """Stored objects do not match the manifest; `problems` lists each file."""

    def __init__(self, message: str, uri: str, problems: list[str]):
        super().__init__(message, uri)
        self.problems = problems

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return type(self), (self.args[0], self.uri, self.problems)


class CheckpointNotFoundError(StorageError):
    """No committed checkpoint at the requested step (or none at all)."""


@contextlib.contextmanager
def guard(op: str, uri: str, passthrough: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turn whatever the client raised into a StorageAccessError that names the URI."""
    try:
        yield
    except passthrough:
        raise
    except StorageError:
        raise
    except PermissionError as err:
        raise StorageAccessError(f"{op} {uri}: access denied ({err})", uri) from err
    except FileNotFoundError as err:
        raise StorageAccessError(f"{op} {uri}: not found ({err}); does the bucket exist?", uri) from err
    except (OSError, TimeoutError, ValueError, RuntimeError) as err:
        raise StorageAccessError(f"{op} {uri} failed: {type(err).__name__}: {err}", uri) from err
    except Exception as err:
        # botocore's own errors (NoCredentialsError, EndpointConnectionError, ...) derive from neither
        if type(err).__module__.split(".")[0] in ("botocore", "aiobotocore"):
            raise StorageAccessError(f"{op} {uri} failed: {type(err).__name__}: {err}", uri) from err
        raise


def client_error_code(err: BaseException) -> str | None:
    """The S3 error code (`PreconditionFailed`, `NotImplemented`...) behind an OSError s3fs raised."""
    cause = err.__cause__
    response = getattr(cause, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None
