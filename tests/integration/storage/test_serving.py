"""openeas-server with --model-repository=s3://... / oss://... (SeaweedFS and embedded)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tritonclient.http as httpclient

from openeas.testing.seaweedfs import SeaweedFS
from openeas.testing.server import ServerProcess
from tests.integration.storage.conftest import infer_add, launch_server, write_model


def upload(local: Path | str, uri: str) -> None:
    """``openeas cp -r`` (the user's way to publish a repository)."""
    done = subprocess.run(
        [sys.executable, "-m", "openeas.cli.main", "cp", "-r", str(local), uri],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Succeed: Total num:" in done.stdout


def index(server: ServerProcess) -> dict[str, str]:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        return {m["name"]: m.get("state", "") for m in client.get_model_repository_index()}
    finally:
        client.close()


def test_s3_deep_prefix_through_endpoint(
    tmp_path: Path, use_endpoint: SeaweedFS, bucket: str, servers: list[ServerProcess]
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add_one", 1.0)
    write_model(repo, "add_two", 2.0)
    uri = f"s3://{bucket}/teams/vision/prod/models"
    upload(repo, uri)
    server = launch_server(servers, tmp_path / "logs", uri)
    assert infer_add(server.http_url, "add_one") == 1.0
    assert infer_add(server.http_url, "add_two") == 2.0
    assert index(server) == {"add_one": "READY", "add_two": "READY"}


def test_oss_whole_bucket_through_endpoint(
    tmp_path: Path, use_endpoint: SeaweedFS, bucket: str, servers: list[ServerProcess]
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "whole", 3.0)
    upload(f"{repo}/", f"oss://{bucket}/")  # DIR/: its contents at the bucket root
    for uri in (f"oss://{bucket}", f"oss://{bucket}/"):
        server = launch_server(servers, tmp_path / "logs", uri)
        assert infer_add(server.http_url, "whole") == 3.0


def test_embedded_default_oss_and_s3(
    tmp_path: Path, openeas_home: Path, servers: list[ServerProcess]
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "local_add", 4.0)
    upload(repo, "oss://triton-model-repo/models")
    # The embedded store keeps the bucket under $OPENEAS_HOME/buckets/<bucket>/.
    stored = openeas_home / "buckets" / "triton-model-repo" / "models" / "local_add"
    assert (stored / "config.pbtxt").is_file()
    for uri in ("oss://triton-model-repo/models", "s3://triton-model-repo/models/"):
        server = launch_server(servers, tmp_path / "logs", uri)
        assert infer_add(server.http_url, "local_add") == 4.0
    # Whole bucket: the repository root is the bucket itself.
    upload(repo, "oss://whole-bucket")
    server = launch_server(servers, tmp_path / "logs", "oss://whole-bucket")
    assert infer_add(server.http_url, "local_add") == 4.0
    assert (openeas_home / "cache" / "repos").is_dir()


def test_object_store_and_local_roots_together(
    tmp_path: Path, use_endpoint: SeaweedFS, bucket: str, servers: list[ServerProcess]
) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    write_model(remote, "from_store", 5.0)
    write_model(local, "from_disk", 6.0)
    upload(remote, f"s3://{bucket}/r")
    server = launch_server(
        servers, tmp_path / "logs", f"s3://{bucket}/r", f"--model-repository=file://{local}"
    )
    assert infer_add(server.http_url, "from_store") == 5.0
    assert infer_add(server.http_url, "from_disk") == 6.0
