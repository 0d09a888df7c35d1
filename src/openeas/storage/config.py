"""Where ``oss://`` and ``s3://`` URIs go: the embedded bucket store or a real endpoint.

With no ``OPENEAS_STORAGE_ENDPOINT`` set, buckets are directories under
``$OPENEAS_HOME/buckets/<bucket>/`` (the embedded default: everything works on one
machine).  With an endpoint, every bucket lives there and the credentials come from
``OPENEAS_STORAGE_ACCESS_KEY`` / ``OPENEAS_STORAGE_SECRET_KEY``, else from the standard
AWS variables and config files (boto3's chain).  With neither, a home where
``openeas up --runtime ray`` runs its embedded S3 server uses that server
(:mod:`openeas.storage.embedded_s3`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from openeas.home import openeas_home

ENDPOINT_ENV = "OPENEAS_STORAGE_ENDPOINT"
ACCESS_KEY_ENV = "OPENEAS_STORAGE_ACCESS_KEY"
SECRET_KEY_ENV = "OPENEAS_STORAGE_SECRET_KEY"
REGION_ENV = "OPENEAS_STORAGE_REGION"
#: ``path`` or ``virtual``; default ``virtual`` for Alibaba OSS hosts, ``path`` otherwise.
ADDRESSING_ENV = "OPENEAS_STORAGE_ADDRESSING_STYLE"


@dataclass(frozen=True)
class StorageConfig:
    """How to reach object storage.  ``repr`` never shows the secret key."""

    endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    region: str | None = None
    addressing_style: str | None = None
    #: root of the embedded bucket store (used when ``endpoint`` is None)
    buckets_root: Path | None = None
    #: create a bucket that an upload writes to when it does not exist (the embedded S3
    #: server, where buckets appear on first use as in the directory store)
    create_buckets: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StorageConfig:
        """The configuration from the environment (``os.environ`` by default; for the
        process's own environment, the home's embedded S3 server when no endpoint is set)."""
        if env is None and not os.environ.get(ENDPOINT_ENV):
            from openeas.storage import embedded_s3

            embedded = embedded_s3.load(openeas_home())
            if embedded is not None:
                return embedded
        env = os.environ if env is None else env
        return cls(
            endpoint=env.get(ENDPOINT_ENV) or None,
            access_key=env.get(ACCESS_KEY_ENV) or None,
            secret_key=env.get(SECRET_KEY_ENV) or None,
            region=env.get(REGION_ENV) or None,
            addressing_style=env.get(ADDRESSING_ENV) or None,
        )

    @property
    def embedded(self) -> bool:
        return self.endpoint is None

    @property
    def bucket_root(self) -> Path:
        """The directory holding the embedded store's buckets."""
        return self.buckets_root or openeas_home() / "buckets"

    @property
    def resolved_addressing_style(self) -> str:
        if self.addressing_style:
            return self.addressing_style
        host = urlparse(self.endpoint or "").hostname or ""
        # OSS refuses path-style requests; S3-compatible servers on a plain host:port
        # (SeaweedFS, MinIO) usually have no wildcard DNS for virtual hosts.
        return "virtual" if host.endswith("aliyuncs.com") else "path"

    def location(self) -> str:
        """Where buckets live, for messages and cache keys (no credentials)."""
        return self.endpoint or f"embedded store {self.bucket_root}"
