"""The Ray runtime on a real Ray cluster of this machine: a head and two worker nodes.

The head and worker ``a`` form resource group ``default``, worker ``b`` group ``pool``
(each declares its ``openeas_group_<name>`` custom resource).  A real platform
(``openeas up --runtime ray``) runs on it; the tests go through eascmd and the gateway
as a user does.  They run in order: the node-loss test removes worker ``a`` last.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openeas.testing.seaweedfs import SeaweedFS, start_seaweedfs
from openeas.testing.server import free_port
from tests.integration.conftest import copy_test_model, wait_until
from tests.integration.platform.conftest import (
    Platform,
    make_add_sub_repository,
    platform_running,
    service_doc,
)
from tests.integration.platform.test_eascmd import Load, infer, instances, running
from tests.integration.platform.test_restart_and_storage import _pid_alive

pytestmark = pytest.mark.ray

cluster_utils = pytest.importorskip(
    "ray.cluster_utils", reason="ray is not installed (pip install 'openeas[ray]')"
)

#: small nodes for a 2-core box: logical CPUs above the physical ones, an 80 MB object
#: store, no dashboard (docs/cluster.md)
_NODE = {"num_cpus": 4, "object_store_memory": 80 * 2**20}


def _group(name: str) -> dict[str, Any]:
    return {**_NODE, "resources": {f"openeas_group_{name}": 1000}}


class Nodes:
    def __init__(self) -> None:
        self.cluster = cluster_utils.Cluster(
            initialize_head=True, head_node_args={"include_dashboard": False, **_group("default")}
        )
        self.head = self.cluster.head_node.node_id
        self.a = self.cluster.add_node(**_group("default"))
        self.b = self.cluster.add_node(**_group("pool"))


@pytest.fixture(scope="module")
def nodes() -> Iterator[Nodes]:
    made = Nodes()
    try:
        yield made
    finally:
        made.cluster.shutdown()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """An S3 endpoint every node reaches, known to the platform only (not to the nodes)."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), ("triton-model-repo",))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ray_platform(
    tmp_path_factory: pytest.TempPathFactory, nodes: Nodes, store: SeaweedFS
) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("openeas-ray")
    api, http, grpc = free_port(), free_port(), free_port()
    args = [
        f"--api-port={api}",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        "--runtime=ray",
        f"--ray-address={nodes.cluster.address}",
        "--restart-backoff=0.2",
        "--log-level=info",
    ]
    plat = Platform(home, api, http, grpc, args, extra_env=store.env())
    with platform_running(plat):
        yield plat


@pytest.fixture(scope="module")
def repo(ray_platform: Platform) -> Path:
    return make_add_sub_repository(ray_platform.home / "repo")


def _create(platform: Platform, doc: dict[str, Any]) -> str:
    out = platform.ok("create", str(platform.write_spec(doc, f"{doc['name']}.json")))
    assert out.splitlines()[-1] == "[OK] Service is running", out
    return str(platform.json("desc", doc["name"])["token"])


def _infer_grpc(platform: Platform, token: str, name: str) -> None:
    """One add/sub request through the gateway's gRPC port (``x-eas-service`` names it)."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{platform.grpc_port}")
    try:
        data = np.arange(16, dtype=np.float32).reshape(1, 16)
        inputs = [
            grpcclient.InferInput("INPUT0", [1, 16], "FP32"),
            grpcclient.InferInput("INPUT1", [1, 16], "FP32"),
        ]
        for item in inputs:
            item.set_data_from_numpy(data)
        headers = {"authorization": token, "x-eas-service": name}
        result = client.infer("simple", inputs, headers=headers)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data + data)
    finally:
        client.close()


def _nodes_of(platform: Platform, name: str) -> list[str]:
    return sorted(i["node"] for i in running(platform, name))


def test_groups_are_the_nodes_resources(ray_platform: Platform) -> None:
    groups = {g["name"]: g for g in ray_platform.json("resource", "list")}
    assert sorted(groups) == ["default", "pool"]
    assert (groups["default"]["nodes"], groups["default"]["cpu"]) == (2, 8)
    assert (groups["pool"]["nodes"], groups["pool"]["cpu"]) == (1, 4)


def test_placement_by_group_and_spread_and_queries_through_the_gateway(
    ray_platform: Platform, nodes: Nodes, repo: Path
) -> None:
    token = _create(ray_platform, service_doc("spread", repo, instance=2))
    # SPREAD: one instance on each node of group default, never both on one
    assert _nodes_of(ray_platform, "spread") == sorted([nodes.head, nodes.a.node_id])
    pool_token = _create(ray_platform, service_doc("pooled", repo, resource="pool"))
    assert _nodes_of(ray_platform, "pooled") == [nodes.b.node_id]
    for _ in range(4):  # both instances of "spread" answer, over TCP on their nodes
        infer(ray_platform, token, "spread")
        _infer_grpc(ray_platform, token, "spread")
    infer(ray_platform, pool_token, "pooled")
    table = ray_platform.ok("instances", "pooled")
    assert nodes.b.node_id[:12] in table and "Node" in table.splitlines()[1]
    # eascmd logs reads an instance's log from its node, written owner-only there
    assert "Started HTTPService" in ray_platform.ok("logs", "pooled")
    [log] = (ray_platform.home / "logs" / "instances" / "pooled").glob("*.log")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700


def test_an_oss_repository_is_read_on_the_node_from_the_platform_s_endpoint(
    ray_platform: Platform, nodes: Nodes
) -> None:
    # The nodes were started without any OPENEAS_STORAGE_* variable: the runtime hands
    # the platform's endpoint and credentials to the instance.
    assert not any(k.startswith("OPENEAS_STORAGE_") for k in os.environ)
    local = make_add_sub_repository(ray_platform.home / "to-upload")
    ray_platform.ok("upload", str(local), "--to", "oss://triton-model-repo/models/")
    assert not (ray_platform.home / "buckets").exists()  # it went to the S3 endpoint
    doc = service_doc("from_oss", "oss://triton-model-repo/models", resource="pool")
    token = _create(ray_platform, doc)
    assert _nodes_of(ray_platform, "from_oss") == [nodes.b.node_id]
    infer(ray_platform, token, "from_oss")
    ray_platform.ok("delete", "-y", "from_oss")


def test_a_service_too_big_for_its_group_waits_with_the_reason(
    ray_platform: Platform, repo: Path
) -> None:
    doc = service_doc("too_big", repo, resource="pool", cpu=5)
    ray_platform.ok("create", "--no-wait", str(ray_platform.write_spec(doc, "big.json")))
    try:
        desc = wait_until(
            lambda: (
                (d := ray_platform.json("desc", "too_big"))["status"] == "Waiting"
                and d["message"]
                and d
            ),
            what="Waiting with a reason",
        )
        assert desc["reason"] == "InsufficientResources"
        assert "insufficient cpu: need 5, 3 of 4 free in resource group 'pool'" in desc["message"]
    finally:
        ray_platform.ok("delete", "-y", "too_big")


def test_in_flight_counts_the_requests_pending_on_an_instance_on_another_node(
    nodes: Nodes, tmp_path: Path
) -> None:
    """What a drain waits for: the pending requests of an instance on worker ``b``, read
    through its actor (its own namespace: the platform above never sees it)."""
    import httpx

    from openeas.platform.runtimes.base import Launch
    from openeas.platform.runtimes.ray import RayCluster, RayRuntime

    repo = tmp_path / "models"
    copy_test_model(repo, "slow", replace={'string_value: "0.2"': 'string_value: "2"'})
    launch = Launch("in-flight-1", "in_flight", [f"--model-repository={repo}"], resource="pool")
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": [1.0]}]}

    async def poll(check: Any, what: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (result := await check()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)
        return result

    async def scenario(runtime: RayRuntime) -> None:
        address = await runtime.start(launch)
        assert address.node == nodes.b.node_id
        await poll(lambda: runtime.probe(launch.instance_id), "the instance ready")
        assert await runtime.in_flight(launch.instance_id) == 0
        url = f"http://{address.host}:{address.http_port}/v2/models/slow/infer"
        async with httpx.AsyncClient(timeout=60) as client:
            sent = [asyncio.create_task(client.post(url, json=body)) for _ in range(2)]

            async def both_pending() -> bool:
                return await runtime.in_flight(launch.instance_id) == 2

            await poll(both_pending, "two requests in flight")
            assert [r.status_code for r in await asyncio.gather(*sent)] == [200, 200]
        assert await runtime.in_flight(launch.instance_id) == 0

    async def main() -> None:
        cluster = RayCluster(nodes.cluster.address, namespace="openeas_in_flight_test")
        runtime = RayRuntime(nodes.cluster.address, tmp_path / "logs", cluster=cluster)
        try:
            await scenario(runtime)
        finally:
            await runtime.stop(launch.instance_id, 10)
            runtime.forget(launch.instance_id)
            await runtime.close()

    asyncio.run(main())


def test_a_restarted_platform_re_adopts_its_actors_and_stops_orphans(
    ray_platform: Platform,
) -> None:
    before = {i["name"]: i["pid"] for i in running(ray_platform, "spread")}
    orphan = running(ray_platform, "pooled")[0]
    ray_platform.stop(signal.SIGKILL)  # a crash: the detached actors keep running
    # The orphan's service was deleted while no control plane ran.
    with sqlite3.connect(ray_platform.home / "platform.db") as db:
        db.execute("DELETE FROM instances WHERE id = ?", (orphan["name"],))
    ray_platform.start()
    wait_until(lambda: len(running(ray_platform, "spread")) == 2, timeout=60, what="re-adoption")
    assert {i["name"]: i["pid"] for i in running(ray_platform, "spread")} == before
    reasons = [e["reason"] for e in ray_platform.json("events", "spread")]
    assert reasons.count("InstanceAdopted") == 2
    wait_until(lambda: not _pid_alive(orphan["pid"]), what="orphan stopped")
    wait_until(lambda: len(running(ray_platform, "pooled")) == 1, what="pooled replaced")
    assert running(ray_platform, "pooled")[0]["name"] != orphan["name"]


def test_a_lost_node_s_instance_moves_with_no_failures_beyond_those_in_flight(
    ray_platform: Platform, nodes: Nodes
) -> None:
    token = str(ray_platform.json("desc", "spread")["token"])
    lost = next(i for i in running(ray_platform, "spread") if i["node"] == nodes.a.node_id)
    with Load(ray_platform, token, "spread") as load:
        nodes.cluster.remove_node(nodes.a)
        wait_until(
            lambda: _nodes_of(ray_platform, "spread") == [nodes.head, nodes.head],
            timeout=30,
            what="the instance back on the head",
        )
        served = load.ok
        wait_until(lambda: load.ok > served + 5, what="requests after the move")
    # one request in flight at a time (a single client): at most that one fails
    assert len(load.failures) <= 1, load.failures
    events = ray_platform.json("events", "spread")
    lost_events = [e for e in events if e["reason"] == "InstanceLost"]
    assert lost_events and lost["name"] in lost_events[0]["message"]
    assert nodes.a.node_id in lost_events[0]["message"]
    moved = next(i for i in instances(ray_platform, "spread") if i["name"] == lost["name"])
    assert moved["node"] == nodes.head and moved["restarts"] == 1
    # the lost node's server died with its actor (no server left behind on the machine)
    wait_until(lambda: not _pid_alive(lost["pid"]), what="the lost node's server gone")
