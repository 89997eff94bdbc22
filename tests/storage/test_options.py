"""StorageOptions: where the endpoint comes from, and the checks of the options."""

from __future__ import annotations

import pytest

from sphinxx.storage import StorageOptions


def test_endpoint_precedence(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert StorageOptions().resolved_endpoint() is None  # AWS itself
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:9000")
    assert StorageOptions().resolved_endpoint() == "http://generic:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:9000")
    assert StorageOptions().resolved_endpoint() == "http://s3-only:9000"
    assert StorageOptions(endpoint_url="http://config:1").resolved_endpoint() == "http://config:1"


@pytest.mark.parametrize(
    "bad",
    [
        {"retry_mode": "legacy"},
        {"max_attempts": 0},
        {"min_chunk_bytes": 1 << 20},
        {"conditional_writes": "maybe"},
    ],
)
def test_option_validation(bad):
    with pytest.raises(ValueError):
        StorageOptions(**bad)
