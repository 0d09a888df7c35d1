"""Copy files between the local file system and an object store (``openeas cp``).

A destination ending in ``/`` (or an existing local directory) receives the source's base
name.  A local directory uploaded with ``recursive`` follows ``cp -r`` and ``rsync``, one
rule for every destination: ``./models/m`` into ``oss://b/models/`` or into the bucket
root ``oss://b/`` becomes ``.../m/...``; a source written with a trailing slash
(``./models/m/``, or ``.``) or a destination without one (``oss://b/models``, ``oss://b``)
receives the directory's *contents*.  ``ossutil cp -r`` differs: it always copies the
contents (never the directory itself), so ``ossutil cp -r DIR oss://b/p/`` is
``openeas cp -r DIR/ oss://b/p/``.  Downloads copy the contents of a prefix into the
destination directory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from openeas.storage.base import ObjectInfo, ObjectStore, Progress
from openeas.storage.config import StorageConfig
from openeas.storage.errors import InvalidStorageURI, StorageError, StorageNotFound
from openeas.storage.factory import open_store
from openeas.storage.uri import StorageURI, check_relative_key, parse_uri


@dataclass
class TransferSummary:
    """What a copy did: ``direction`` is ``upload`` or ``download``."""

    direction: str
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0


#: Told the number of files and bytes about to be copied (e.g. to size a progress bar).
OnPlan = Callable[[int, int], None]


def copy(
    src: str,
    dst: str,
    recursive: bool = False,
    progress: Progress | None = None,
    on_plan: OnPlan | None = None,
    threads: int = 8,
    config: StorageConfig | None = None,
) -> TransferSummary:
    """Copy ``src`` to ``dst`` (one side local, the other ``oss://``/``s3://``)."""
    source, dest = parse_uri(src), parse_uri(dst)
    if source.remote == dest.remote:
        raise InvalidStorageURI(
            f"{src} -> {dst}", "one side must be a local path and the other oss:// or s3://"
        )
    started = time.monotonic()
    if dest.remote:
        summary = _upload(
            source.local_path, src, dest, dst, recursive, progress, on_plan, threads, config
        )
    else:
        summary = _download(
            source, dest.local_path, dst, recursive, progress, on_plan, threads, config
        )
    summary.seconds = time.monotonic() - started
    return summary


def _upload(
    src: Path,
    src_text: str,
    dest: StorageURI,
    dst_text: str,
    recursive: bool,
    progress: Progress | None,
    on_plan: OnPlan | None,
    threads: int,
    config: StorageConfig | None,
) -> TransferSummary:
    if src.is_dir():
        if not recursive:
            raise StorageError(str(src), "is a directory (use -r to copy it recursively)")
        files = sorted(p for p in src.rglob("*") if p.is_file())
        prefix = f"{src.resolve().name}/" if _keeps_name(src_text, dst_text) else ""
        jobs = [(p, prefix + p.relative_to(src).as_posix()) for p in files]
    elif src.is_file():
        into_dir = not dest.key or dst_text.endswith("/")
        jobs = [(src, src.name if into_dir else "")]
    else:
        raise StorageNotFound(str(src), "no such file or directory")
    store = open_store(dest, config)
    try:
        sizes = [p.stat().st_size for p, _ in jobs]
        if on_plan:
            on_plan(len(jobs), sum(sizes))
        _run(threads, [lambda p=p, rel=rel: store.upload(p, rel, progress) for p, rel in jobs])
    finally:
        store.close()
    return TransferSummary("upload", len(jobs), sum(sizes))


def _keeps_name(src_text: str, dst_text: str) -> bool:
    """Whether an uploaded directory lands under its own name (``cp -r DIR dest/``):
    the destination ends with ``/`` (a prefix or a bucket root alike) and the source is
    named without a trailing slash (``DIR/``, ``.`` and ``..`` mean its contents)."""
    if not dst_text.endswith("/") or src_text.endswith(("/", os.sep)):
        return False
    return Path(src_text).name not in ("", ".", "..")


def _download(
    source: StorageURI,
    dest: Path,
    dst_text: str,
    recursive: bool,
    progress: Progress | None,
    on_plan: OnPlan | None,
    threads: int,
    config: StorageConfig | None,
) -> TransferSummary:
    store = open_store(source, config)
    try:
        jobs: list[tuple[ObjectInfo, Path]] = []
        single = store.stat("") if source.key and not source.key.endswith("/") else None
        if single is not None and not recursive:
            into_dir = dest.is_dir() or dst_text.endswith(("/", os.sep))
            name = source.key.rsplit("/", 1)[-1]
            jobs.append((single, dest / name if into_dir else dest))
        elif recursive:
            for info in store.list():
                if info.key.endswith("/"):
                    continue
                rel = check_relative_key(store.uri_of(info.key), info.key)
                jobs.append((info, dest / rel))
            if not jobs and single is not None:  # -r on a single object copies it
                jobs.append((single, dest / source.key.rsplit("/", 1)[-1]))
        elif any(True for _ in store.list()):
            raise StorageError(str(source), "is a prefix (use -r to copy it recursively)")
        else:
            raise StorageNotFound(str(source), "no such object")
        if on_plan:
            on_plan(len(jobs), sum(info.size for info, _ in jobs))
        for parent in {target.parent for _, target in jobs}:
            parent.mkdir(parents=True, exist_ok=True)
        _run(threads, [lambda i=i, t=t: store.download(i, t, progress) for i, t in jobs])
    finally:
        store.close()
    return TransferSummary("download", len(jobs), sum(info.size for info, _ in jobs))


def _run(threads: int, tasks: list[Callable[[], None]]) -> None:
    """Run ``tasks`` in parallel; re-raise the first failure after all have finished."""
    if not tasks:
        return
    with ThreadPoolExecutor(max(1, min(threads, len(tasks))), "storage-cp") as pool:
        futures = [pool.submit(task) for task in tasks]
    for future in futures:
        exc = future.exception()
        if exc is not None:
            raise exc


def list_objects(uri: str, config: StorageConfig | None = None) -> list[ObjectInfo]:
    """Every object below ``uri``, sorted by key."""
    store: ObjectStore = open_store(uri, config)
    try:
        return sorted(store.list(), key=lambda info: info.key)
    finally:
        store.close()
