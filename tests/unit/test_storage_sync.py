"""The sync engine over the embedded bucket store (a real directory, no server)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from openeas.storage import RepositoryMount, open_store, sync_repository


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPENEAS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OPENEAS_STORAGE_ENDPOINT", raising=False)
    return tmp_path / "home"


def put(home: Path, bucket: str, key: str, data: bytes) -> None:
    src = home.parent / "src.tmp"
    src.write_bytes(data)
    open_store(f"oss://{bucket}").upload(src, key)


def test_local_paths_are_returned_unchanged(tmp_path: Path) -> None:
    assert sync_repository(str(tmp_path)) == tmp_path
    assert sync_repository(f"file://{tmp_path}") == tmp_path
    assert RepositoryMount(str(tmp_path)).refresh() is False


def test_sync_incremental_and_atomic(home: Path) -> None:
    put(home, "repo-bucket", "models/a/config.pbtxt", b"a1")
    put(home, "repo-bucket", "models/a/1/model.onnx", b"x" * 1000)
    put(home, "repo-bucket", "models/b/config.pbtxt", b"b1")
    mount = RepositoryMount("oss://repo-bucket/models")
    assert mount.refresh() is True
    assert mount.local_path == home / "cache" / "repos" / mount.repo_dir.name / "current"
    assert mount.local_path.is_symlink()
    assert (mount.local_path / "a" / "config.pbtxt").read_bytes() == b"a1"
    assert mount.refresh() is False

    model = mount.local_path / "a" / "1" / "model.onnx"
    inode, mtime = model.stat().st_ino, model.stat().st_mtime_ns
    assert not os.access(model, os.W_OK) or os.geteuid() == 0
    assert model.stat().st_mode & 0o222 == 0  # blobs are read-only

    put(home, "repo-bucket", "models/a/config.pbtxt", b"a2")
    open_store("oss://repo-bucket/models").delete("b/config.pbtxt")
    before = os.readlink(mount.local_path)
    assert mount.refresh() is True
    assert os.readlink(mount.local_path) != before
    assert (mount.local_path / "a" / "config.pbtxt").read_bytes() == b"a2"
    assert not (mount.local_path / "b").exists()
    # Unchanged objects are not fetched again: same inode, same mtime.
    assert (model.stat().st_ino, model.stat().st_mtime_ns) == (inode, mtime)
    # The previous tree is still complete for readers that resolved it.
    assert (mount.repo_dir / before / "b" / "config.pbtxt").read_bytes() == b"b1"


def test_whole_bucket_and_via_s3_scheme(home: Path) -> None:
    put(home, "whole", "m/config.pbtxt", b"m")
    for uri in ("oss://whole", "oss://whole/", "s3://whole"):
        path = sync_repository(uri)
        assert (path / "m" / "config.pbtxt").read_bytes() == b"m"


def test_old_snapshots_and_blobs_are_collected(home: Path) -> None:
    mount = RepositoryMount("oss://gc-bucket/r")
    for i in range(6):
        put(home, "gc-bucket", "r/m/config.pbtxt", f"v{i}".encode())
        assert mount.refresh() is True
    snapshots = [p for p in (mount.repo_dir / "snapshots").iterdir() if p.is_dir()]
    assert len(snapshots) == 3  # current + 2 previous
    manifests = list((mount.repo_dir / "snapshots").glob("*.json"))
    assert len(manifests) == 3


def test_poll_logs_failures_and_backs_off(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    mount = RepositoryMount("oss://late-bucket/models")
    caplog.set_level(logging.ERROR, "openeas.storage")
    assert mount.poll() is False
    assert "oss://late-bucket/models" in caplog.text and "does not exist" in caplog.text
    assert mount.poll() is False  # within the backoff: the store is not asked again
    assert caplog.text.count("refreshing model repository failed") == 1
    put(home, "late-bucket", "models/m/config.pbtxt", b"m")
    mount._retry_at = 0.0  # the backoff has elapsed
    assert mount.poll() is True
    assert (mount.local_path / "m" / "config.pbtxt").exists()
