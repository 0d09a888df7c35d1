"""The Ray runtime's embedded S3 server: one store for `openeas cp`, `eascmd upload` and
instances on every node, when no ``OPENEAS_STORAGE_ENDPOINT`` is configured.

A head that runs no instances (it declares no group) and one worker node of group
``default``: every instance lands on the worker and must read its ``oss://`` repository
from the S3 server the platform runs on the head's machine.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openeas.testing.server import free_port
from tests.integration.conftest import wait_until
from tests.integration.platform.conftest import (
    Platform,
    make_add_sub_repository,
    platform_running,
    service_doc,
)
from tests.integration.platform.test_eascmd import infer, running

pytestmark = pytest.mark.ray

cluster_utils = pytest.importorskip(
    "ray.cluster_utils", reason="ray is not installed (pip install 'openeas[ray]')"
)

_NODE = {"num_cpus": 4, "object_store_memory": 80 * 2**20}


@pytest.fixture(scope="module")
def worker() -> Iterator[tuple[Any, str]]:
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"include_dashboard": False, **_NODE}
    )
    try:
        node = cluster.add_node(**_NODE, resources={"openeas_group_default": 1000})
        yield cluster, node.node_id
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def ray_platform(
    tmp_path_factory: pytest.TempPathFactory, worker: tuple[Any, str]
) -> Iterator[Platform]:
    # No OPENEAS_STORAGE_* anywhere: the platform runs its own S3 server.
    assert not any(k.startswith("OPENEAS_STORAGE_") for k in os.environ)
    home = tmp_path_factory.mktemp("openeas-ray-s3")
    api, http, grpc = free_port(), free_port(), free_port()
    args = [
        f"--api-port={api}",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        "--runtime=ray",
        f"--ray-address={worker[0].address}",
        f"--storage-port={free_port()}",
        "--restart-backoff=0.2",
        "--log-level=debug",  # the secret must not show even there
    ]
    plat = Platform(home, api, http, grpc, args)
    with platform_running(plat):
        yield plat


def _openeas(platform: Platform, *args: str) -> str:
    result = platform.eascmd_platform(*args)
    assert result.returncode == 0, f"openeas {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _components(platform: Platform) -> dict[str, Any]:
    return dict(json.loads(_openeas(platform, "status", "--json"))["components"])


def test_cp_and_upload_reach_an_instance_on_another_node(
    ray_platform: Platform, worker: tuple[Any, str]
) -> None:
    local = make_add_sub_repository(ray_platform.home / "repo")
    _openeas(ray_platform, "cp", "-r", f"{local}/", "oss://cp-bucket/models/")
    ray_platform.ok("upload", str(local), "--to", "oss://upload-bucket/models/")
    assert not (ray_platform.home / "buckets").exists()  # not the directory store
    listed = _openeas(ray_platform, "ls", "oss://upload-bucket/models/")
    assert "oss://upload-bucket/models/simple/config.pbtxt" in listed
    for name, bucket in (("from_cp", "cp-bucket"), ("from_upload", "upload-bucket")):
        doc = service_doc(name, f"oss://{bucket}/models")
        out = ray_platform.ok("create", str(ray_platform.write_spec(doc, f"{name}.json")))
        assert out.splitlines()[-1] == "[OK] Service is running", out
        assert [i["node"] for i in running(ray_platform, name)] == [worker[1]]
        infer(ray_platform, str(ray_platform.json("desc", name)["token"]), name)
    assert {"object-store", "s3"} <= set(_components(ray_platform))


def test_the_credentials_are_private_and_never_logged(
    ray_platform: Platform, worker: tuple[Any, str]
) -> None:
    state = ray_platform.home / "s3" / "storage.json"
    secret = json.loads(state.read_text())["secret_key"]
    assert len(secret) >= 30
    for path in (state, ray_platform.home / "s3" / "identities.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    logs = [ray_platform.home / "platform-test.log", *(ray_platform.home / "logs").rglob("*")]
    files = [p for p in logs if p.is_file()]
    assert any("s3" in p.parts for p in files)  # weed's own log files
    assert any("instances" in p.parts for p in files)
    for path in files:
        assert secret not in path.read_text(errors="replace"), path
    # nor in Ray's own logs (the instance's actor got the keys in its constructor)
    ray_logs = Path(worker[0].head_node.get_session_dir_path()) / "logs"
    ray_files = [p for p in ray_logs.rglob("*") if p.is_file()]
    assert ray_files
    for path in ray_files:
        assert secret.encode() not in path.read_bytes(), path


def test_the_s3_server_is_restarted_with_its_objects(ray_platform: Platform) -> None:
    before = _components(ray_platform)["s3"]
    os.kill(int(before["pid"]), signal.SIGKILL)
    wait_until(
        lambda: _components(ray_platform)["s3"]["restarts"] == before["restarts"] + 1,
        timeout=30,
        what="the s3 component restarted",
    )
    listed = wait_until(
        lambda: (
            (r := ray_platform.eascmd_platform("ls", "oss://cp-bucket/models/")).returncode == 0
            and r.stdout
        ),
        timeout=30,
        what="the store answering again",
    )
    assert "oss://cp-bucket/models/simple/1/model.onnx" in listed
