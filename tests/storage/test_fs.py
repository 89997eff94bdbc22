"""The filesystem factory: where the endpoint comes from, option checks, filesystem renewal."""

from __future__ import annotations

import pytest

from sphinxx.storage import CheckpointStore, StorageOptions


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


def test_filesystem_is_renewed_after_its_max_age():
    fresh = CheckpointStore("memory://renew/runs", "run", options=StorageOptions(fs_max_age_s=0))
    assert fresh.fs() is not fresh.fs()
    cached = CheckpointStore("memory://renew/runs", "run")
    assert cached.fs() is cached.fs()


def test_s3_clients_follow_the_options(s3_server, monkeypatch):
    """Both client stacks get the endpoint, retries and timeouts from StorageOptions (no env needed)."""
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env.items():
        if not key.startswith("AWS_ENDPOINT"):
            monkeypatch.setenv(key, value)
    bucket = s3_server.new_bucket()
    options = StorageOptions(endpoint_url=s3_server.endpoint_url, max_attempts=4, read_timeout_s=7)
    store = CheckpointStore(f"s3://{bucket}/runs", "run", options=options)
    with store.writer(1) as w:
        w.write_bytes("a", b"x")
    assert store.commit(1).step == 1
    from sphinxx.storage.fs import make_boto3_client

    config = make_boto3_client(options).meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 4} and config.read_timeout == 7
    s3fs_config = store.fs().fs.config_kwargs
    assert s3fs_config["retries"]["total_max_attempts"] == 4 and s3fs_config["read_timeout"] == 7


def test_missing_credentials_are_a_storage_error_naming_the_uri(s3_server, monkeypatch, tmp_path) -> None:
    """botocore's NoCredentialsError derives from no OSError: it still surfaces as our error."""
    from sphinxx.storage import StorageAccessError, StorageOptions, open_fs

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    fs = open_fs("s3://somebucket/prefix", StorageOptions(endpoint_url=s3_server.endpoint_url))
    with pytest.raises(StorageAccessError, match=r"s3://somebucket/prefix.*NoCredentialsError"):
        fs.list_files("s3://somebucket/prefix")
