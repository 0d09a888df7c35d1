"""Object-store model repositories: ``oss://``, ``s3://``, ``file://`` and local paths.

- :func:`sync_repository` / :class:`RepositoryMount`: a local, atomically swapped copy
  of the objects below a URI, for the server to read (``refresh()`` for polling).
- :func:`open_store`: list, download and upload objects (``openeas cp`` / ``ls``).
- :class:`StorageConfig`: the embedded bucket store (``$OPENEAS_HOME/buckets``) or an
  S3-compatible endpoint (``OPENEAS_STORAGE_ENDPOINT`` and credentials).
"""

from openeas.storage.base import ObjectInfo, ObjectStore
from openeas.storage.config import StorageConfig
from openeas.storage.errors import (
    InvalidStorageURI,
    StorageAccessDenied,
    StorageError,
    StorageNotFound,
    StorageUnavailable,
)
from openeas.storage.factory import open_store
from openeas.storage.sync import RepositoryMount, sync_repository
from openeas.storage.uri import StorageURI, parse_uri

__all__ = [
    "InvalidStorageURI",
    "ObjectInfo",
    "ObjectStore",
    "RepositoryMount",
    "StorageAccessDenied",
    "StorageConfig",
    "StorageError",
    "StorageNotFound",
    "StorageURI",
    "StorageUnavailable",
    "open_store",
    "parse_uri",
    "sync_repository",
]
