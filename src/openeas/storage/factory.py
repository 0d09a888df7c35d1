"""``open_store``: the object store behind a URI."""

from __future__ import annotations

from openeas.storage.base import ObjectStore
from openeas.storage.config import StorageConfig
from openeas.storage.local import FileStore
from openeas.storage.uri import StorageURI, parse_uri


def open_store(uri: str | StorageURI, config: StorageConfig | None = None) -> ObjectStore:
    """The store holding the objects below ``uri``.

    A local path or ``file://`` gives its directory; ``oss://``/``s3://`` give the
    embedded bucket store (``$OPENEAS_HOME/buckets``) when no endpoint is configured,
    else the S3-compatible endpoint of ``config`` (default: from the environment).
    """
    parsed = parse_uri(uri) if isinstance(uri, str) else uri
    if not parsed.remote:
        return FileStore(parsed, parsed.local_path)
    config = config or StorageConfig.from_env()
    if config.embedded:
        bucket_dir = config.bucket_root / parsed.bucket
        key = parsed.key.rstrip("/")
        return FileStore(parsed, bucket_dir / key if key else bucket_dir, bucket_dir)
    from openeas.storage.s3 import S3Store  # boto3 is imported only when needed

    return S3Store(parsed, config)
