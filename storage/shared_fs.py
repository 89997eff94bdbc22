"""`SharedFs`: one filesystem for every `CheckpointStore` that is given it, rebuilt every few minutes.

A store alone builds its own filesystem (an S3 client with its own connections) and rebuilds it
once older than `StorageOptions.fs_max_age_s`, so credentials never go stale (ray#35524). A
process that reads many runs - the operator, with a store per TrainingRun - passes the stores
one `SharedFs` per set of options instead: one S3 client and one connection pool for all of
them, rebuilt on the same schedule, where a client per run held about 2 MB each (2 GB at 1,000
running points) and each rebuilt its own every five minutes.
"""

from __future__ import annotations

import threading
import time

from . import uri as uri_mod
from .objectfs import ObjectFS, open_fs
from .options import StorageOptions


class SharedFs:
    """The filesystem of one URI scheme and one `StorageOptions`, built on first use and rebuilt
    once older than `options.fs_max_age_s`. Thread-safe: the stores of many threads share it."""

    def __init__(self, uri: str, options: StorageOptions | None = None):
        self.scheme = uri_mod.scheme(uri)  # of `uri`: s3, file or memory (the rest is not used)
        self.uri = uri
        self.options = options or StorageOptions()
        self._fs: ObjectFS | None = None
        self._born = 0.0
        self._lock = threading.Lock()

    def get(self) -> ObjectFS:
        """The current filesystem (a new one after `fs_max_age_s`; stores keep no other)."""
        with self._lock:
            now = time.monotonic()
            if self._fs is None or now - self._born >= self.options.fs_max_age_s:
                self._fs, self._born = open_fs(self.uri, self.options), now
            return self._fs
