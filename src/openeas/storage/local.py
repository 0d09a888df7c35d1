"""Objects as files in a directory: the embedded bucket store and plain local paths."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from openeas.storage.base import PART_SUFFIX, ObjectInfo, ObjectStore, Progress
from openeas.storage.errors import StorageError, StorageNotFound
from openeas.storage.uri import StorageURI

#: Temporary files of uploads in progress; never listed.
_TEMP_PREFIX = ".openeas-upload-"


class FileStore(ObjectStore):
    """Files below ``root``.  For the embedded store ``bucket_dir`` is the bucket's
    directory, which must exist for reads (as a missing bucket fails on S3)."""

    def __init__(self, uri: StorageURI, root: Path, bucket_dir: Path | None = None) -> None:
        super().__init__(uri)
        self.root = root
        self.bucket_dir = bucket_dir

    def _path(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def _check_bucket(self) -> None:
        if self.bucket_dir is not None and not self.bucket_dir.is_dir():
            raise StorageNotFound(
                str(self.uri),
                f"bucket '{self.uri.bucket}' does not exist in {self.bucket_dir.parent}",
            )

    @staticmethod
    def _info(rel: str, st: os.stat_result) -> ObjectInfo:
        etag = f"{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}"
        return ObjectInfo(rel, st.st_size, etag, st.st_mtime)

    def list(self) -> Iterator[ObjectInfo]:
        self._check_bucket()
        if self.root.is_file():
            yield self._info("", self.root.stat())
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(_TEMP_PREFIX) or name.endswith(PART_SUFFIX):
                    continue
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue
                rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                yield self._info(rel, st)

    def stat(self, rel: str = "") -> ObjectInfo | None:
        self._check_bucket()
        try:
            st = self._path(rel).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return self._info(rel, st) if not os.path.isdir(self._path(rel)) else None

    def download(self, info: ObjectInfo, dest: Path, progress: Progress | None = None) -> None:
        source = self._path(info.key)
        part = dest.with_name(dest.name + PART_SUFFIX)
        try:
            shutil.copyfile(source, part)
            os.replace(part, dest)
        except FileNotFoundError as exc:
            raise StorageNotFound(self.uri_of(info.key), "the object disappeared") from exc
        except OSError as exc:
            raise StorageError(self.uri_of(info.key), f"copy failed: {exc}") from exc
        if progress:
            progress(info.size)

    def upload(self, src: Path, rel: str, progress: Progress | None = None) -> None:
        target = self._path(rel)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=target.parent)
            os.close(fd)
            try:
                shutil.copyfile(src, tmp)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(self.uri_of(rel), f"write failed: {exc}") from exc
        if progress:
            progress(src.stat().st_size)

    def delete(self, rel: str) -> None:
        try:
            self._path(rel).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(self.uri_of(rel), f"delete failed: {exc}") from exc
