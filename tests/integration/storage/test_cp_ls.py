"""``openeas cp`` / ``openeas ls`` against SeaweedFS and the embedded store."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openeas.storage import RepositoryMount, open_store
from openeas.testing.seaweedfs import SeaweedFS


def openeas(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openeas.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): digest(p) for p in root.rglob("*") if p.is_file()}


def sample_tree(root: Path) -> Path:
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "config.pbtxt").write_text('name: "m"\n')
    (root / "m" / "1" / "model.onnx").write_bytes(os.urandom(300_000))
    (root / "m" / "1" / "empty.txt").write_bytes(b"")
    (root / "other" / "a" / "b").mkdir(parents=True)
    (root / "other" / "a" / "b" / "weights.bin").write_bytes(os.urandom(5_000))
    return root


@pytest.mark.parametrize("scheme", ["s3", "oss"])
def test_recursive_round_trip_through_endpoint(
    tmp_path: Path, use_endpoint: SeaweedFS, bucket: str, scheme: str
) -> None:
    src = sample_tree(tmp_path / "src")
    uri = f"{scheme}://{bucket}/deep/er/prefix/"
    up = openeas("cp", "-r", str(src), uri)
    assert up.returncode == 0, up.stderr
    assert "Succeed: Total num: 4" in up.stdout and "upload 4 files" in up.stdout

    listed = openeas("ls", f"{scheme}://{bucket}")
    assert listed.returncode == 0, listed.stderr
    assert f"{scheme}://{bucket}/deep/er/prefix/src/m/1/model.onnx" in listed.stdout
    assert " 300000 " in listed.stdout
    assert "Object Number is: 4" in listed.stdout

    down = openeas("cp", "-r", uri, str(tmp_path / "back"))
    assert down.returncode == 0, down.stderr
    assert "download 4 files" in down.stdout
    assert tree(tmp_path / "back" / "src") == tree(src)


def test_directory_name_kept_unless_source_ends_with_slash(
    tmp_path: Path, openeas_home: Path
) -> None:
    """``cp -r ./models/m oss://b/models/`` -> models/m/...; ``./models/m/`` -> contents."""
    src = sample_tree(tmp_path / "src")
    bucket_dir = openeas_home / "buckets" / "layout-bucket"
    assert openeas("cp", "-r", str(src / "m"), "oss://layout-bucket/models/").returncode == 0
    assert tree(bucket_dir / "models" / "m") == tree(src / "m")
    assert openeas("cp", "-r", f"{src / 'm'}/", "oss://layout-bucket/flat/").returncode == 0
    assert tree(bucket_dir / "flat") == tree(src / "m")
    assert openeas("cp", "-r", str(src / "m"), "oss://layout-bucket/exact").returncode == 0
    assert tree(bucket_dir / "exact") == tree(src / "m")


@pytest.mark.parametrize("scheme", ["s3", "oss"])
def test_bucket_root_follows_the_same_rule(
    tmp_path: Path, use_endpoint: SeaweedFS, bucket: str, scheme: str
) -> None:
    """``cp -r DIR s3://b/`` puts DIR under ``DIR/`` as any ``prefix/`` does; ``DIR/``,
    ``.`` and a bare ``s3://b`` copy the contents (``ossutil cp -r`` always does)."""
    src = sample_tree(tmp_path / "src")

    def keys() -> set[str]:
        return {info.key for info in open_store(f"{scheme}://{bucket}").list()}

    assert openeas("cp", "-r", str(src / "m"), f"{scheme}://{bucket}/").returncode == 0
    assert keys() == {"m/config.pbtxt", "m/1/model.onnx", "m/1/empty.txt"}
    assert openeas("cp", "-r", f"{src / 'other'}/", f"{scheme}://{bucket}/").returncode == 0
    assert "a/b/weights.bin" in keys()
    assert openeas("cp", "-r", str(src / "other" / "a"), f"{scheme}://{bucket}").returncode == 0
    assert "b/weights.bin" in keys()
    here = subprocess.run(
        [sys.executable, "-m", "openeas.cli.main", "cp", "-r", ".", f"{scheme}://{bucket}/dot/"],
        cwd=src / "m",
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert here.returncode == 0, here.stderr
    assert {"dot/config.pbtxt", "dot/1/model.onnx"} <= keys()


def test_single_files_both_ways(tmp_path: Path, use_endpoint: SeaweedFS, bucket: str) -> None:
    src = sample_tree(tmp_path / "src")
    model = src / "m" / "1" / "model.onnx"
    assert openeas("cp", str(model), f"s3://{bucket}/into/").returncode == 0
    assert openeas("cp", str(model), f"s3://{bucket}/exact.onnx").returncode == 0
    assert openeas("cp", str(model), f"s3://{bucket}").returncode == 0
    keys = {info.key for info in open_store(f"s3://{bucket}").list()}
    assert keys == {"into/model.onnx", "exact.onnx", "model.onnx"}

    (tmp_path / "dl").mkdir()
    assert openeas("cp", f"s3://{bucket}/exact.onnx", str(tmp_path / "dl")).returncode == 0
    assert openeas("cp", f"s3://{bucket}/into/model.onnx", str(tmp_path / "x.bin")).returncode == 0
    assert digest(tmp_path / "dl" / "exact.onnx") == digest(model)
    assert digest(tmp_path / "x.bin") == digest(model)
    assert openeas("cp", "-r", f"s3://{bucket}/exact.onnx", str(tmp_path / "r")).returncode == 0
    assert digest(tmp_path / "r" / "exact.onnx") == digest(model)


def test_embedded_round_trip(tmp_path: Path, openeas_home: Path) -> None:
    src = sample_tree(tmp_path / "src")
    assert openeas("cp", "-r", str(src), "oss://embedded-bucket/repo").returncode == 0
    assert tree(openeas_home / "buckets" / "embedded-bucket" / "repo") == tree(src)
    listed = openeas("ls", "s3://embedded-bucket/repo")
    assert "Object Number is: 4" in listed.stdout
    assert openeas("cp", "-r", "s3://embedded-bucket/repo", str(tmp_path / "back")).returncode == 0
    assert tree(tmp_path / "back") == tree(src)


def test_errors_are_clear(tmp_path: Path, seaweedfs: SeaweedFS, bucket: str) -> None:
    src = sample_tree(tmp_path / "src")
    no_r = openeas("cp", str(src), "oss://some-bucket/x/")
    assert no_r.returncode == 1 and "use -r" in no_r.stderr
    both_remote = openeas("cp", "oss://a-bucket/x", "s3://b-bucket/y")
    assert both_remote.returncode == 1 and "one side must be a local path" in both_remote.stderr
    bad_uri = openeas("ls", "oss://Bad_Bucket/x")
    assert bad_uri.returncode == 1 and "invalid bucket name 'Bad_Bucket'" in bad_uri.stderr
    missing = openeas("cp", "oss://no-such-bucket/x.onnx", str(tmp_path))
    assert missing.returncode == 1 and "oss://no-such-bucket/x.onnx" in missing.stderr

    env = {**os.environ, **seaweedfs.env(OPENEAS_STORAGE_SECRET_KEY="wrong-secret")}
    denied = subprocess.run(
        [sys.executable, "-m", "openeas.cli.main", "ls", f"s3://{bucket}/"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert denied.returncode == 1
    assert f"s3://{bucket}/" in denied.stderr and "access denied" in denied.stderr
    assert "wrong-secret" not in denied.stderr + denied.stdout


def test_large_object_multipart_upload_and_parallel_sync(
    tmp_path: Path, use_endpoint: SeaweedFS, bucket: str
) -> None:
    big = tmp_path / "repo" / "big" / "1" / "model.bin"
    big.parent.mkdir(parents=True)
    with open(big, "wb") as f:
        for _ in range(105):
            f.write(os.urandom(1 << 20))
    expected = digest(big)
    up = openeas("cp", "-r", str(tmp_path / "repo"), f"s3://{bucket}/large")
    assert up.returncode == 0, up.stderr
    info = open_store(f"s3://{bucket}/large").stat("big/1/model.bin")
    assert info is not None and info.size == 105 << 20
    assert "-" in info.etag  # a multipart upload's ETag

    mount = RepositoryMount(f"s3://{bucket}/large", cache_root=tmp_path / "cache")
    assert mount.refresh() is True
    assert digest(mount.local_path / "big" / "1" / "model.bin") == expected
    assert mount.refresh() is False

    down = openeas("cp", f"s3://{bucket}/large/big/1/model.bin", str(tmp_path / "copy.bin"))
    assert down.returncode == 0, down.stderr
    assert digest(tmp_path / "copy.bin") == expected
