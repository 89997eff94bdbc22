"""The S3 clients: the only place in the project that builds one.

`open_fs` (objectfs.py) gets an s3fs filesystem for small objects and listings
(`make_s3fs`), and whole-file transfers (s3bulk.py) a boto3 client
(`make_boto3_client`), both from the same `StorageOptions`:

- the endpoint from `StorageOptions.endpoint_url`, else `AWS_ENDPOINT_URL_S3`,
  else `AWS_ENDPOINT_URL` (MinIO, moto, Ceph...), else AWS itself;
- credentials from the default botocore chain (env, IRSA web identity, a
  named `profile`), resolved when the client is built. fsspec's instance
  cache is switched off and `CheckpointStore` rebuilds its filesystem after
  `fs_max_age_s` (minutes, not days: stale credentials stopped uploads in
  ray#35524);
- botocore's retry mode (`standard`/`adaptive`, 10 attempts) as the single retry
  layer (s3fs's own retry loop is set to one try so attempts do not multiply),
  and connect/read timeouts;
- listing caches off: a reader must see a manifest the moment it exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import StorageOptions

# mypy_boto3_s3 is a stub-only package of the dev extra, never imported at run time.
if TYPE_CHECKING:
    from botocore.loaders import Loader
    from mypy_boto3_s3 import S3Client

_LOADER: Loader | None = None


def make_s3fs(options: StorageOptions) -> Any:
    """An s3fs filesystem (fsspec and s3fs ship no types: Any) with the options' endpoint,
    credentials, retries and timeouts."""
    # Imported here, not at the head: s3fs and aiobotocore take about 1 s to import, which
    # `import sphinxx.storage` (and so `sphinxx --help`) and file:// or memory:// users never pay.
    import s3fs
    from aiobotocore.session import AioSession

    global _LOADER
    client_kwargs: dict[str, Any] = {}
    if options.region:
        client_kwargs["region_name"] = options.region
    # A new session per filesystem (fresh credentials), sharing only botocore's parsed
    # service models: loading them is most of the ~0.5 s a new client costs.
    session = AioSession(profile=options.profile) if options.profile else AioSession()
    _LOADER = _LOADER or create_loader_lazily()
    session.register_component("data_loader", _LOADER)
    fs = s3fs.S3FileSystem(
        endpoint_url=options.resolved_endpoint(),
        client_kwargs=client_kwargs,
        config_kwargs={
            # total_max_attempts counts the first try (botocore's max_attempts would not).
            "retries": {"mode": options.retry_mode, "total_max_attempts": options.max_attempts},
            "connect_timeout": options.connect_timeout_s,
            "read_timeout": options.read_timeout_s,
        },
        use_listings_cache=False,
        skip_instance_cache=True,
        # 1: cat_file() then reads an object with one GET. Above 1 it first HEADs it, to fetch
        # large objects in ranged parts; whole-file transfers go through s3bulk.py instead.
        max_concurrency=1,
        session=session,
    )
    fs.retries = 1  # botocore retries; s3fs's own loop on top would multiply attempts (10 x 5)
    return fs


def make_boto3_client(options: StorageOptions, max_connections: int = 10) -> S3Client:
    """A boto3 S3 client with the same endpoint, credentials, retries and timeouts as the s3fs filesystem."""
    # Imported here for the same reason as s3fs (boto3 takes about 0.4 s): S3 transfers only.
    import boto3
    import botocore.session
    from botocore.config import Config

    global _LOADER
    core = botocore.session.get_session()
    _LOADER = _LOADER or create_loader_lazily()
    core.register_component("data_loader", _LOADER)
    session = boto3.session.Session(botocore_session=core, profile_name=options.profile)
    config = Config(
        retries={"mode": options.retry_mode, "total_max_attempts": options.max_attempts},
        connect_timeout=options.connect_timeout_s,
        read_timeout=options.read_timeout_s,
        max_pool_connections=max_connections,
    )
    return session.client(
        "s3", endpoint_url=options.resolved_endpoint(), region_name=options.region, config=config
    )


def create_loader_lazily() -> Loader:
    """botocore's loader of service models, shared by every client this process builds."""
    from botocore.loaders import create_loader  # botocore only once an S3 client is built

    return create_loader()
