"""The S3 clients: both stacks get the endpoint, retries and timeouts from StorageOptions."""

from __future__ import annotations

from sphinxx.storage import CheckpointStore, StorageOptions
from sphinxx.storage.clients import make_boto3_client


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
    config = make_boto3_client(options).meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 4} and config.read_timeout == 7
    s3fs_config = store.fs().fs.config_kwargs
    assert s3fs_config["retries"]["total_max_attempts"] == 4 and s3fs_config["read_timeout"] == 7
