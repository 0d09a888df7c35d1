"""Mount = sync an object-store prefix into a local cache the server reads.

Layout under the cache root (``$OPENEAS_HOME/cache`` by default)::

    blobs/ab/<id>            one file per distinct object version (id = hash of ETag
                             and size), read-only, shared by every mounted URI
    tmp/<repo>/              downloads in progress (``.part`` files resume after a crash)
    repos/<repo>/lock        file lock: one sync of a URI at a time across processes
    repos/<repo>/snapshots/<snap>/       a complete tree of hard links into blobs/
    repos/<repo>/snapshots/<snap>.json   its manifest: key -> [etag, size, blob id]
    repos/<repo>/current -> snapshots/<snap>   what the server reads (swapped atomically)

A refresh lists the prefix, fetches only the blobs it does not have yet (in parallel,
large objects as parallel ranges), builds the new tree next to the old one and then
replaces the ``current`` symlink with one ``rename``: a reader sees the old tree or the
new one, never a partial download.  Unchanged files keep their inode and mtime, so the
server's change detection reloads only the models that really changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from filelock import FileLock, Timeout

from openeas.home import openeas_home
from openeas.storage.base import ObjectInfo, ObjectStore
from openeas.storage.config import StorageConfig
from openeas.storage.errors import InvalidStorageURI, StorageError, StorageUnavailable
from openeas.storage.factory import open_store
from openeas.storage.uri import StorageURI, check_relative_key, parse_uri

log = logging.getLogger(__name__)

#: Older snapshots kept besides ``current`` (a model load that started just before a
#: swap may still be reading one).
KEEP_SNAPSHOTS = 2
#: Unreferenced blobs younger than this are kept (another mount may be about to link them).
BLOB_GRACE_SECONDS = 600
#: Partial downloads untouched for this long are removed.
STALE_PART_SECONDS = 86400
#: How long a sync waits for another process syncing the same URI.
LOCK_TIMEOUT_SECONDS = 1800
_MAX_BACKOFF_SECONDS = 60.0


def default_cache_root() -> Path:
    return openeas_home() / "cache"


class RepositoryMount:
    """A local, atomically updated copy of the objects below a storage URI.

    ``local_path`` is the directory to serve (a stable path whose target is swapped;
    do not resolve it).  For a local path or ``file://`` URI it is that directory and
    :meth:`refresh` does nothing.
    """

    def __init__(
        self,
        uri: str,
        cache_root: Path | None = None,
        config: StorageConfig | None = None,
        threads: int = 10,
    ) -> None:
        self.uri: StorageURI = parse_uri(uri)
        self.config = config or StorageConfig.from_env()
        self.cache_root = Path(cache_root or default_cache_root()).expanduser().absolute()
        self.threads = threads
        self._store: ObjectStore | None = None
        self._lock = threading.Lock()
        self._failures = 0
        self._retry_at = 0.0
        if not self.uri.remote:
            self.local_path = self.uri.local_path
            return
        self.repo_dir = self.cache_root / "repos" / _repo_key(self.uri, self.config)
        self.local_path = self.repo_dir / "current"

    def __repr__(self) -> str:
        return f"RepositoryMount({str(self.uri)!r} -> {str(self.local_path)!r})"

    # -- public ------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Bring ``local_path`` up to date with the store; True when it changed.

        Raises a ``StorageError`` naming the URI and cause; ``local_path`` then still
        shows the last complete copy (if any).
        """
        if not self.uri.remote:
            return False
        with self._lock:
            self.repo_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.repo_dir / "lock"))
            try:
                with lock.acquire(timeout=LOCK_TIMEOUT_SECONDS):
                    return self._refresh_locked()
            except Timeout:
                raise StorageUnavailable(
                    str(self.uri), f"another process holds {lock.lock_file} for too long"
                ) from None

    def poll(self) -> bool:
        """:meth:`refresh` for a polling loop: logs failures instead of raising and,
        after one, waits with exponential backoff before trying the store again."""
        now = time.monotonic()
        if now < self._retry_at:
            return False
        try:
            changed = self.refresh()
        except StorageError as exc:
            self._failures += 1
            delay = min(_MAX_BACKOFF_SECONDS, 2.0 ** (self._failures - 1))
            self._retry_at = now + delay
            log.error(
                "refreshing model repository failed (attempt %d, next try in %.0fs; "
                "serving the last synced copy): %s",
                self._failures,
                delay,
                exc,
            )
            return False
        if self._failures:
            log.info("model repository %s is reachable again", self.uri)
        self._failures = 0
        self._retry_at = 0.0
        return changed

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- the sync ----------------------------------------------------------------------

    def _open(self) -> ObjectStore:
        if self._store is None:
            self._store = open_store(self.uri, self.config)
        return self._store

    def _refresh_locked(self) -> bool:
        store = self._open()
        listing = self._listing(store)
        wanted = {rel: [info.etag, info.size, _blob_id(info)] for rel, info in listing.items()}
        if self.local_path.is_dir() and self._current_manifest() == wanted:
            return False
        started = time.monotonic()
        fetched, size = self._fetch_missing(store, listing)
        self._publish(wanted)
        log.info(
            "synced %s: %d objects, %d fetched (%d bytes) in %.2fs",
            self.uri,
            len(listing),
            fetched,
            size,
            time.monotonic() - started,
        )
        self._collect_garbage()
        return True

    def _listing(self, store: ObjectStore) -> dict[str, ObjectInfo]:
        objects: dict[str, ObjectInfo] = {}
        for info in store.list():
            if info.key.endswith("/"):
                continue  # a "directory marker" object
            try:
                objects[check_relative_key(str(self.uri), info.key)] = info
            except InvalidStorageURI as exc:
                log.warning("%s; skipped", exc)
        dirs = {rel.rsplit("/", 1)[0] for rel in objects if "/" in rel}
        dirs |= {d.rsplit("/", i)[0] for d in list(dirs) for i in range(1, d.count("/") + 1)}
        for rel in sorted(dirs & objects.keys()):
            log.warning("%s: object '%s' is also a directory prefix; skipped", self.uri, rel)
            del objects[rel]
        if not objects:
            log.warning("%s: no objects below this prefix (an empty model repository)", self.uri)
        return objects

    def _current_manifest(self) -> dict[str, list[object]] | None:
        try:
            target = os.readlink(self.local_path)
            data = json.loads((self.repo_dir / (target + ".json")).read_text())
        except (OSError, ValueError):
            return None
        objects = data.get("objects") if isinstance(data, dict) else None
        return objects if isinstance(objects, dict) else None

    def _blob_path(self, blob: str) -> Path:
        return self.cache_root / "blobs" / blob[:2] / blob

    def _fetch_missing(self, store: ObjectStore, listing: dict[str, ObjectInfo]) -> tuple[int, int]:
        """Download the blobs not yet in the cache, in parallel; (count, bytes)."""
        todo: dict[str, ObjectInfo] = {}
        for info in listing.values():
            blob = _blob_id(info)
            if blob not in todo and not self._blob_path(blob).exists():
                todo[blob] = info
        if not todo:
            return 0, 0
        tmp_dir = self.cache_root / "tmp" / self.repo_dir.name
        tmp_dir.mkdir(parents=True, exist_ok=True)

        def fetch(blob: str, info: ObjectInfo) -> None:
            staged = tmp_dir / blob
            store.download(info, staged)
            os.chmod(staged, 0o444)  # hard links share the inode: nobody may write it
            target = self._blob_path(blob)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)

        # Largest first: the big objects' ranges overlap with the many small files.
        order = sorted(todo.items(), key=lambda item: -item[1].size)
        with ThreadPoolExecutor(min(self.threads, len(order)), "storage-sync") as pool:
            futures = [pool.submit(fetch, blob, info) for blob, info in order]
        errors = [exc for f in futures if (exc := f.exception()) is not None]
        if errors:
            first = errors[0]
            if isinstance(first, StorageError):
                raise first
            raise StorageError(str(self.uri), f"download failed: {first}") from first
        return len(order), sum(info.size for info in todo.values())

    def _publish(self, wanted: dict[str, list[object]]) -> None:
        """Build the new snapshot tree of hard links and swap ``current`` to it."""
        snapshots = self.repo_dir / "snapshots"
        snapshots.mkdir(exist_ok=True)
        snap = f"{time.time_ns():016x}-{os.getpid()}"
        staging = snapshots / f".staging-{snap}"
        staging.mkdir()
        for rel, (_, _, blob) in wanted.items():
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(self._blob_path(str(blob)), dest)
        manifest = snapshots / f"{snap}.json"
        tmp = manifest.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"uri": str(self.uri), "objects": wanted}))
        os.replace(tmp, manifest)
        os.rename(staging, snapshots / snap)
        link_tmp = self.repo_dir / f".current-{snap}"
        os.symlink(f"snapshots/{snap}", link_tmp)
        os.replace(link_tmp, self.local_path)
        _fsync_dir(self.repo_dir)

    def _collect_garbage(self) -> None:
        """Drop old snapshots (all but current and the newest few) and unused blobs."""
        snapshots = self.repo_dir / "snapshots"
        try:
            current = os.path.basename(os.readlink(self.local_path))
        except OSError:
            return
        names = sorted(
            (p.name for p in snapshots.iterdir() if _SNAPSHOT.match(p.name) and p.is_dir()),
            reverse=True,
        )
        old = [n for n in names if n != current][KEEP_SNAPSHOTS:]
        stale = [p for p in snapshots.iterdir() if p.name.startswith(".staging-")]
        for path in [*(snapshots / n for n in old), *stale]:
            shutil.rmtree(path, ignore_errors=True)
            (snapshots / f"{path.name}.json").unlink(missing_ok=True)
        if old:
            _collect_blobs(self.cache_root / "blobs")
        # Partial downloads of object versions that no longer exist are never resumed.
        cutoff = time.time() - STALE_PART_SECONDS
        for path in (self.cache_root / "tmp" / self.repo_dir.name).glob("*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                continue


_SNAPSHOT = re.compile(r"^[0-9a-f]{16}-\d+$")


def _collect_blobs(blobs: Path) -> None:
    """Remove blobs that no snapshot links to any more (link count 1)."""
    cutoff = time.time() - BLOB_GRACE_SECONDS
    for path in blobs.glob("*/*"):
        try:
            st = path.stat()
            if st.st_nlink == 1 and st.st_ctime < cutoff:
                path.unlink()
        except OSError:
            continue


def _blob_id(info: ObjectInfo) -> str:
    return hashlib.sha256(f"{info.etag}\0{info.size}".encode()).hexdigest()[:40]


def _repo_key(uri: StorageURI, config: StorageConfig) -> str:
    """A cache directory name for a URI: readable, and unique per endpoint."""
    # oss:// and s3:// reach the same bucket, so the scheme is not part of the identity.
    identity = f"{config.location()}\0{uri.bucket}\0{uri.key.strip('/')}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{uri.bucket}/{uri.key.strip('/')}").strip("_")
    return f"{readable[:60]}-{digest}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_repository(uri: str, cache_root: Path | None = None) -> Path:
    """Sync ``uri`` into the cache once; the local directory the server can read.

    A plain local path (or ``file://`` URI) is returned unchanged.  Raises
    ``StorageError`` naming the URI and the cause.
    """
    mount = RepositoryMount(uri, cache_root)
    try:
        mount.refresh()
    finally:
        mount.close()
    return mount.local_path
