"""Storage URIs: a local path, ``file://PATH``, ``oss://bucket[/key]`` or ``s3://bucket[/key]``.

``oss://`` and ``s3://`` name the same kind of thing (a bucket of an S3-compatible
store; Alibaba OSS speaks the S3 API), so both parse to a :class:`StorageURI` with
``remote`` true.  The key may be empty (the whole bucket) or any depth of prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from openeas.storage.errors import InvalidStorageURI

REMOTE_SCHEMES = ("oss", "s3")

# S3's rules for bucket names (lowercase letters, digits, dots and hyphens; 3-63
# characters; starts and ends with a letter or digit); OSS's are a subset.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class StorageURI:
    """A parsed storage location.

    For ``oss``/``s3``: ``bucket`` and ``key`` (no leading ``/``; may end with ``/``).
    For local locations (``scheme == "file"``): ``path``.
    """

    scheme: str
    bucket: str = ""
    key: str = ""
    path: Path | None = None

    @property
    def remote(self) -> bool:
        return self.scheme in REMOTE_SCHEMES

    @property
    def local_path(self) -> Path:
        """The local path of a ``file`` URI (ValueError for a remote one)."""
        if self.path is None:
            raise ValueError(f"{self} is not a local path")
        return self.path

    def child(self, rel: str) -> StorageURI:
        """The URI of ``rel`` (a ``/``-separated relative key) below this one."""
        if not rel:
            return self
        if self.path is not None:
            return StorageURI("file", path=self.path / rel)
        base = self.key.rstrip("/")
        return StorageURI(self.scheme, self.bucket, f"{base}/{rel}" if base else rel)

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"{self.scheme}://{self.bucket}/{self.key}"


def parse_uri(text: str) -> StorageURI:
    """Parse ``text``; raises :class:`InvalidStorageURI` naming what is wrong."""
    if not text:
        raise InvalidStorageURI(repr(text), "empty storage location")
    scheme, sep, rest = text.partition("://")
    if not sep:
        return StorageURI("file", path=Path(text).expanduser())
    scheme = scheme.lower()
    if scheme == "file":
        if not rest:
            raise InvalidStorageURI(text, "file:// needs a path")
        return StorageURI("file", path=Path(rest).expanduser())
    if scheme not in REMOTE_SCHEMES:
        raise InvalidStorageURI(
            text, f"unsupported scheme '{scheme}://' (use a local path, file://, oss:// or s3://)"
        )
    bucket, _, key = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise InvalidStorageURI(
            text,
            f"invalid bucket name '{bucket}' (3-63 lowercase letters, digits, dots or hyphens)",
        )
    key = re.sub(r"/{2,}", "/", key).lstrip("/")
    if any(part in (".", "..") for part in key.split("/")) or "\x00" in key:
        raise InvalidStorageURI(text, "the key must not contain '.' or '..' segments")
    return StorageURI(scheme, bucket, key)


def check_relative_key(uri: str, rel: str) -> str:
    """Reject object keys that would escape a local directory when mirrored there."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in rel:
        raise InvalidStorageURI(uri, f"object key '{rel}' cannot be stored as a local file")
    return rel
