"""The object-store interface shared by the embedded (directory) store and S3/OSS."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from openeas.storage.uri import StorageURI

#: Called with the number of bytes just transferred (for progress bars).
Progress = Callable[[int], None]

#: Suffix of partial downloads next to their destination.
PART_SUFFIX = ".part"


@dataclass(frozen=True)
class ObjectInfo:
    """One object: its key relative to the store's base URI ("" = the base itself)."""

    key: str
    size: int
    #: opaque version tag: the S3 ETag, or size/mtime/inode in the embedded store
    etag: str
    mtime: float


class ObjectStore(ABC):
    """Objects under one base URI (a bucket, or a prefix of one, or a local directory).

    Keys are ``/``-separated and relative to the base; ``""`` names the object at the
    base itself (``cp oss://b/file.onnx ./``).  Every failure is a ``StorageError``.
    """

    def __init__(self, uri: StorageURI) -> None:
        self.uri = uri

    def uri_of(self, rel: str = "") -> str:
        return str(self.uri.child(rel))

    @abstractmethod
    def list(self) -> Iterator[ObjectInfo]:
        """Every object below the base (recursively), in no particular order."""

    @abstractmethod
    def stat(self, rel: str = "") -> ObjectInfo | None:
        """The object ``rel`` or None when it does not exist."""

    @abstractmethod
    def download(self, info: ObjectInfo, dest: Path, progress: Progress | None = None) -> None:
        """Write the object to ``dest`` atomically (``dest.part`` first, then rename).

        An interrupted download leaves ``dest.part`` behind; the next call resumes it
        when the store supports ranged reads and the object has not changed.
        """

    @abstractmethod
    def upload(self, src: Path, rel: str, progress: Progress | None = None) -> None:
        """Store the local file ``src`` as ``rel`` (readers never see a partial object)."""

    @abstractmethod
    def delete(self, rel: str) -> None:
        """Remove the object ``rel`` (no error when it is absent)."""

    def close(self) -> None:  # noqa: B027 - optional: only some stores hold resources
        """Release connections and threads."""
