"""The run's places in storage, from its `storage` section: one way to open them for every caller.

The driver, the train loop, the local runner, the export and Ray's storage all open the same
`<storage.uri>/<run_id>/` folder (`sphinxx.storage.RunLayout`) with the same client settings;
these helpers are that one way, so no caller spells `StorageOptions(endpoint_url=...)` itself.
"""

from __future__ import annotations

from sphinxx.schema.run import StorageConfig
from sphinxx.storage import CheckpointStore, RetentionPolicy, StorageOptions


def storage_options(storage: StorageConfig) -> StorageOptions:
    """Client settings of the run's store (the endpoint; credentials come from the environment)."""
    return StorageOptions(endpoint_url=storage.endpoint_url)


def run_store(run_id: str, storage: StorageConfig, attempt: int = 0) -> CheckpointStore:
    """The checkpoint store of run `run_id` (writes are tagged with `attempt`)."""
    return CheckpointStore(storage.uri, run_id, attempt=attempt, options=storage_options(storage))


def retention_policy(storage: StorageConfig) -> RetentionPolicy:
    """What the run keeps after each commit (docs/storage.md, "Retention and partial-folder cleanup")."""
    return RetentionPolicy(
        keep_last=storage.keep_last,
        keep_best=storage.keep_best,
        metric=storage.best_metric,
        milestone_every=storage.milestone_every,
    )
