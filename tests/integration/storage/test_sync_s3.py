"""The sync engine against a real S3 server: incremental, resumable, multi-process safe."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from openeas.storage import ObjectStore, RepositoryMount, open_store
from openeas.storage.s3 import CHUNK_SIZE, S3Store
from openeas.testing.seaweedfs import SeaweedFS


def count_gets(mount: RepositoryMount) -> list[str]:
    """Record the key of every GetObject the mount's store sends."""
    store = mount._open()
    assert isinstance(store, S3Store)
    keys: list[str] = []
    store.client.meta.events.register(
        "provide-client-params.s3.GetObject", lambda params, **_: keys.append(params["Key"])
    )
    return keys


_stores: dict[str, ObjectStore] = {}


def put(bucket: str, key: str, data: bytes) -> None:
    path = Path(os.environ["OPENEAS_HOME"]) / "upload.tmp"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if bucket not in _stores:
        _stores[bucket] = open_store(f"s3://{bucket}")
    _stores[bucket].upload(path, key)


def test_only_changed_objects_are_fetched(
    tmp_path: Path, use_endpoint: SeaweedFS, bucket: str
) -> None:
    for i in range(20):
        put(bucket, f"repo/m{i}/config.pbtxt", f"name: 'm{i}'".encode())
    mount = RepositoryMount(f"s3://{bucket}/repo", cache_root=tmp_path / "cache")
    gets = count_gets(mount)
    assert mount.refresh() is True
    assert len(gets) == 20
    first = os.readlink(mount.local_path)
    unchanged_inode = (mount.local_path / "m1" / "config.pbtxt").stat().st_ino

    put(bucket, "repo/m0/config.pbtxt", b"changed")
    put(bucket, "repo/m20/config.pbtxt", b"new")
    open_store(f"s3://{bucket}").delete("repo/m19/config.pbtxt")
    gets.clear()
    assert mount.refresh() is True
    assert sorted(gets) == ["repo/m0/config.pbtxt", "repo/m20/config.pbtxt"]
    assert (mount.local_path / "m0" / "config.pbtxt").read_bytes() == b"changed"
    assert (mount.local_path / "m20" / "config.pbtxt").read_bytes() == b"new"
    assert not (mount.local_path / "m19").exists()
    assert (mount.local_path / "m1" / "config.pbtxt").stat().st_ino == unchanged_inode
    # The previous tree is untouched (a reader that resolved it keeps a full copy).
    old = mount.repo_dir / first
    assert (old / "m0" / "config.pbtxt").read_bytes() == b"name: 'm0'"
    assert (old / "m19" / "config.pbtxt").exists()
    gets.clear()
    assert mount.refresh() is False and gets == []


CRASHING_SYNC = """
import os, sys
from pathlib import Path
from openeas.storage import RepositoryMount
from openeas.storage import s3

mount = RepositoryMount(sys.argv[1], cache_root=Path(sys.argv[2]), threads=1)
store = mount._open()
store._threads = 1
original = store.download

def download(info, dest, progress=None):
    sidecar = dest.with_name(dest.name + ".part.ranges")
    def crash_after_two_ranges(n):
        if sidecar.exists() and len(sidecar.read_text().splitlines()) >= 3:
            os._exit(3)  # like a kill -9: no cleanup at all
    return original(info, dest, crash_after_two_ranges)

store.download = download
mount.refresh()
"""


def test_interrupted_download_resumes_and_is_never_served(
    tmp_path: Path, use_endpoint: SeaweedFS, bucket: str
) -> None:
    size = 5 * CHUNK_SIZE + 12345
    data = os.urandom(size)
    put(bucket, "repo/big/1/model.bin", data)
    put(bucket, "repo/big/config.pbtxt", b"name: 'big'")
    uri, cache = f"s3://{bucket}/repo", tmp_path / "cache"
    crashed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CRASHING_SYNC), uri, str(cache)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert crashed.returncode == 3, crashed.stderr
    mount = RepositoryMount(uri, cache_root=cache)
    assert not mount.local_path.exists()  # nothing half-downloaded is served
    parts = list((cache / "tmp").rglob("*.part.ranges"))
    assert len(parts) == 1
    done = len(parts[0].read_text().splitlines()) - 1
    assert done >= 2

    gets = count_gets(mount)
    assert mount.refresh() is True
    assert (mount.local_path / "big" / "1" / "model.bin").read_bytes() == data
    big_gets = [k for k in gets if k.endswith("model.bin")]
    assert len(big_gets) == 6 - done  # only the ranges the crash left missing


SYNC_ONCE = """
import os, sys
from pathlib import Path
from openeas.storage import sync_repository
path = sync_repository(sys.argv[1], Path(sys.argv[2]))
print(os.readlink(path))
"""


def test_concurrent_processes_share_one_sync(
    tmp_path: Path, use_endpoint: SeaweedFS, bucket: str
) -> None:
    for i in range(30):
        put(bucket, f"models/m{i}/1/model.onnx", os.urandom(20_000))
    uri, cache = f"s3://{bucket}/models", tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SYNC_ONCE, uri, str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    targets = {out.strip() for out, _ in outputs}
    assert len(targets) == 1  # one process synced; the others found it up to date
    mount = RepositoryMount(uri, cache_root=cache)
    snapshots = [p for p in (mount.repo_dir / "snapshots").iterdir() if p.is_dir()]
    assert len(snapshots) == 1
    assert len(list((mount.local_path).rglob("model.onnx"))) == 30
