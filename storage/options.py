"""`StorageOptions`: how to reach the store and how hard to push it; and `MiB`, the unit of its sizes.

It imports nothing of the project, so every module (hashing.py and transfer.py for their block
and part sizes, the filesystem and its clients for the endpoint, retries and timeouts) can
depend on it without forming a cycle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

MiB = 1 << 20


@dataclass(frozen=True)
class StorageOptions:
    """How to reach the store and how hard to push it. Defaults suit AWS S3 and MinIO."""

    endpoint_url: str | None = None  # None: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS
    region: str | None = None  # None: AWS_REGION / AWS_DEFAULT_REGION / the profile's region
    profile: str | None = None  # a named profile in ~/.aws; None: env vars, IRSA, instance role
    retry_mode: Literal["standard", "adaptive"] = (
        "standard"  # botocore retry mode (adaptive adds rate limiting)
    )
    max_attempts: int = 10  # per request, first try included
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0
    conditional_writes: Literal["auto", "on", "off"] = "auto"  # If-None-Match / If-Match on S3
    file_concurrency: int = 4  # files in flight per transfer
    part_concurrency: int = 4  # multipart parts in flight per file
    min_chunk_bytes: int = 8 * MiB  # multipart part size floor (boto3's default)
    file_attempts: int = 3  # whole-file retries for errors botocore cannot retry (a body cut mid-stream)
    deadline_s: float | None = None  # whole-transfer deadline: a hung save fails the step, not the job
    verify_checksums: bool = True  # sha256 on download/verify (sizes are always checked)
    fs_max_age_s: float = (
        300.0  # a store rebuilds its filesystem (and credentials) after this; 0 = every call
    )

    def __post_init__(self) -> None:
        if self.retry_mode not in ("standard", "adaptive"):
            raise ValueError(f"retry_mode must be 'standard' or 'adaptive', got {self.retry_mode!r}")
        if self.conditional_writes not in ("auto", "on", "off"):
            raise ValueError(f"conditional_writes must be auto, on or off, got {self.conditional_writes!r}")
        for name in ("max_attempts", "file_concurrency", "part_concurrency", "file_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_chunk_bytes < 5 * MiB:
            raise ValueError(
                f"min_chunk_bytes must be >= 5 MiB (S3's smallest part), got {self.min_chunk_bytes}"
            )

    def resolved_endpoint(self) -> str | None:
        return (
            self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
