"""The Ray runtime's pure pieces (no Ray needed): groups from node resources, the reason a
lost actor gets, cores on a node, and ``openeas up --runtime ray``'s errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from openeas.platform.resources import ResourceGroup
from openeas.platform.runtimes.ray import _death, groups_of, node_cores
from openeas.testing.server import free_port


def _node(cpu: float, memory_mb: int, gpu: float = 0, **groups: float) -> dict[str, object]:
    resources = {"CPU": cpu, "memory": float(memory_mb * 2**20), "GPU": gpu}
    resources.update({f"openeas_group_{name}": amount for name, amount in groups.items()})
    return {"Alive": True, "Resources": resources}


def test_a_group_is_the_sum_of_the_nodes_that_declare_it() -> None:
    nodes = [
        _node(4, 1000, default=1000),
        _node(4, 2000, default=1000),
        _node(8, 4000, gpu=2, gpu_pool=1),
        _node(16, 8000),  # in no group: runs no instances
    ]
    assert groups_of(nodes) == [
        ResourceGroup("default", 8, 3000, 0, nodes=2),
        ResourceGroup("gpu_pool", 8, 4000, 2, nodes=1),
    ]
    assert groups_of([]) == []


def test_an_actor_lost_with_its_node_says_which_node() -> None:
    text = (
        "The actor died unexpectedly before finishing this task.\n\tname: svc-1\n"
        "The actor died because its node has died. Node Id: abc123\n"
    )
    lost = _death(RuntimeError(text), "abc123")
    assert lost.reason.startswith("NodeLost: node abc123 died")
    other = _death(RuntimeError("The actor died unexpectedly\nkilled by ray.kill"), "abc123")
    assert other.reason == "the instance's actor died: killed by ray.kill"


def test_cores_picked_for_another_machine_fall_back_to_this_node_s() -> None:
    here = sorted(os.sched_getaffinity(0))
    assert node_cores(here[:1], 1) == here[:1]
    assert node_cores([10_000], 1) == here[:1]
    assert node_cores([], 1) == here[:1]


def _up(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENEAS_HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "openeas.cli.main", "up", "--runtime", "ray", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_up_with_the_ray_runtime_needs_a_reachable_head(tmp_path: Path) -> None:
    missing = _up(tmp_path)
    assert missing.returncode == 2
    assert "--runtime ray needs --ray-address (or RAY_ADDRESS)" in missing.stderr
    # a port nothing listens on: a clear message, not Ray's long retries
    ports = [f"--{name}-port={free_port()}" for name in ("api", "http", "grpc", "storage")]
    unreachable = _up(tmp_path, "--ray-address", "127.0.0.1:1", *ports)
    assert unreachable.returncode == 1
    assert "cannot reach the Ray cluster at '127.0.0.1:1'" in unreachable.stderr
