"""The filesystem factory: filesystem renewal, and client failures as errors naming the URI."""

from __future__ import annotations

import pytest

from sphinxx.storage import CheckpointStore, StorageAccessError, StorageOptions, open_fs


def test_filesystem_is_renewed_after_its_max_age():
    fresh = CheckpointStore("memory://renew/runs", "run", options=StorageOptions(fs_max_age_s=0))
    assert fresh.fs() is not fresh.fs()
    cached = CheckpointStore("memory://renew/runs", "run")
    assert cached.fs() is cached.fs()


def test_missing_credentials_are_a_storage_error_naming_the_uri(s3_server, monkeypatch, tmp_path) -> None:
    """botocore's NoCredentialsError derives from no OSError: it still surfaces as our error."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    fs = open_fs("s3://somebucket/prefix", StorageOptions(endpoint_url=s3_server.endpoint_url))
    with pytest.raises(StorageAccessError, match=r"s3://somebucket/prefix.*NoCredentialsError"):
        fs.list_files("s3://somebucket/prefix")
