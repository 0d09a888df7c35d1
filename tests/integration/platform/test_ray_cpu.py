"""``RayRuntime.cpu_seconds``: asked of the instance's actor, measured on its node (a real
one-node Ray cluster of this machine and a real ``openeas-server`` in the actor)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from openeas.platform.runtimes.base import Address, Launch
from openeas.protocol import instance_token
from tests.integration.platform.conftest import make_add_sub_repository

pytestmark = pytest.mark.ray

cluster_utils = pytest.importorskip(
    "ray.cluster_utils", reason="ray is not installed (pip install 'openeas[ray]')"
)

TOKEN = "inner-token"


def _work(address: Address, seconds: float) -> int:
    client = httpclient.InferenceServerClient(f"{address.host}:{address.http_port}")
    headers = {instance_token.HEADER.decode(): TOKEN}
    data = np.ones((1, 16), dtype=np.float32)
    inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for item in inputs:
        item.set_data_from_numpy(data)
    count, end = 0, time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            client.infer("simple", inputs, headers=headers)
            count += 1
    finally:
        client.close()
    return count


def test_the_actor_reports_its_instance_s_cpu_seconds(tmp_path: Path) -> None:
    from openeas.platform.runtimes.ray import RayRuntime

    cluster = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={
            "include_dashboard": False,
            "num_cpus": 4,
            "object_store_memory": 80 * 2**20,
            "resources": {"openeas_group_default": 1000},
        },
    )
    try:
        repo = make_add_sub_repository(tmp_path / "repo")
        runtime = RayRuntime(cluster.address, tmp_path / "logs")
        launch = Launch("raycpu-0", "raycpu", [f"--model-repository={repo}"], internal_token=TOKEN)

        async def scenario() -> None:
            address = await runtime.start(launch)
            try:
                deadline = time.monotonic() + 120
                while not await runtime.probe(launch.instance_id):
                    assert time.monotonic() < deadline, "instance not ready"
                    await asyncio.sleep(0.2)
                before = await runtime.cpu_seconds(launch.instance_id)
                assert before is not None and before > 0
                served = await asyncio.to_thread(_work, address, 2.0)
                after = await runtime.cpu_seconds(launch.instance_id)
                assert after is not None and after - before > 0.1, (served, before, after)
                assert await runtime.cpu_seconds("no-such-instance") is None
            finally:
                await runtime.stop(launch.instance_id, 10)
                runtime.forget(launch.instance_id)
                await runtime.close()

        asyncio.run(scenario())
    finally:
        cluster.shutdown()
