"""Service groups end to end: a real platform (``openeas up``), ``eascmd``, and
tritonclient requests to the group's endpoint through the platform's gateway.

A canary joins the production service's group ``standalone`` and gets none of the group's
requests; released in TrafficMode ``customized`` with Weights 90/10, 100 requests split
exactly 90/10 (smooth weighted round robin); in ``auto`` the split follows the ready
instances (2:1); the group's own token is required (a member's token is refused there);
the group goes with its last member and its endpoint with it.

Requests are counted where they are served: each instance's own ``/metrics``
(``nv_inference_request_success``).  A change is waited for in the gateway's saved route
snapshot (``$OPENEAS_HOME/routes.json``, written after the gateway applied it).
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.integration.conftest import wait_until
from tests.integration.platform.conftest import Platform, make_add_sub_repository, service_doc

GROUP = "shop"
SERVED = re.compile(r'^nv_inference_request_success\{model="simple",version="1"\} (\S+)$', re.M)


@pytest.fixture(scope="module")
def repo(platform: Platform) -> Path:
    return make_add_sub_repository(platform.home / "repo")


@pytest.fixture(scope="module")
def group(platform: Platform, repo: Path) -> dict[str, Any]:
    """prod creates the group; canary joins it (standalone)."""
    for name in ("prod", "canary"):
        spec = platform.write_spec(service_doc(name, repo, group=GROUP), f"{name}.json")
        platform.ok("create", str(spec))
    return dict(platform.json("group", "desc", GROUP))


def served(platform: Platform) -> dict[str, int]:
    """Requests each service's instances have served, from their own metrics."""
    with sqlite3.connect(platform.home / "platform.db") as conn:
        rows = conn.execute("SELECT service, host, metrics_port FROM instances").fetchall()
    counts = {"prod": 0, "canary": 0}
    for service, host, port in rows:
        text = httpx.get(f"http://{host}:{port}/metrics", timeout=10).text
        found = SERVED.search(text)
        counts[service] = counts.get(service, 0) + (int(float(found.group(1))) if found else 0)
    return counts


def _inputs(module: Any) -> tuple[list[Any], np.ndarray]:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    inputs = [module.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for item in inputs:
        item.set_data_from_numpy(a)
    return inputs, a


def send(platform: Platform, token: str, count: int) -> dict[str, int]:
    """``count`` add/sub requests to the group's HTTP endpoint (answers checked); the
    requests each service served meanwhile."""
    before = served(platform)
    client = httpclient.InferenceServerClient(f"{platform.gateway_url}/api/predict/{GROUP}")
    inputs, a = _inputs(httpclient)
    try:
        for _ in range(count):
            result = client.infer("simple", inputs, headers={"Authorization": token})
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    finally:
        client.close()
    after = served(platform)
    return {name: after[name] - before.get(name, 0) for name in after}


def gateway_weights(platform: Platform, expected: dict[str, int]) -> None:
    """Wait until the gateway applied the group's route with these member weights."""

    def applied() -> bool:
        try:
            doc = json.loads((platform.home / "routes.json").read_text())
        except (OSError, ValueError):
            return False
        for route in doc.get("groups", []):
            if route["name"] == GROUP:
                return {m["service"]: m["weight"] for m in route["members"]} == expected
        return False

    wait_until(applied, timeout=60, what=f"the gateway to route group {GROUP} as {expected}")


def test_a_canary_that_joins_standalone_gets_none_of_the_groups_requests(
    platform: Platform, group: dict[str, Any]
) -> None:
    gateway_weights(platform, {"prod": 1, "canary": 0})
    assert send(platform, group["AccessToken"], 20) == {"prod": 20, "canary": 0}


def test_the_groups_token_is_required(platform: Platform, group: dict[str, Any]) -> None:
    url = f"http://{platform.gateway_url}/api/predict/{GROUP}/v2/models/simple/ready"
    member = platform.json("desc", "prod")["token"]
    assert httpx.get(url, headers={"Authorization": member}).status_code == 401
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": group["AccessToken"]}).status_code == 200
    client = httpclient.InferenceServerClient(f"{platform.gateway_url}/api/predict/{GROUP}")
    inputs, _ = _inputs(httpclient)
    with pytest.raises(Exception, match="401|[Uu]nauthori"):
        client.infer("simple", inputs, headers={"Authorization": member})
    client.close()


def test_released_in_customized_mode_100_requests_split_90_10(
    platform: Platform, group: dict[str, Any]
) -> None:
    platform.ok("group", "modify", GROUP, "--traffic-mode", "customized")
    platform.ok("release", "prod", "--weight", "90")
    platform.ok("release", "canary", "--weight", "10", "--traffic-state", "grouping")
    gateway_weights(platform, {"prod": 90, "canary": 10})
    assert send(platform, group["AccessToken"], 100) == {"prod": 90, "canary": 10}
    shares = {
        m["ServiceName"]: m["TrafficShare"]
        for m in platform.json("group", "desc", GROUP)["Members"]
    }
    assert shares == {"prod": 90.0, "canary": 10.0}


def test_grpc_requests_to_the_group_name_are_split_too(
    platform: Platform, group: dict[str, Any]
) -> None:
    before = served(platform)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{platform.grpc_port}")
    inputs, _ = _inputs(grpcclient)
    headers = {"authorization": group["AccessToken"], "x-eas-service": GROUP}
    for _ in range(100):
        client.infer("simple", inputs, headers=headers)
    client.close()
    after = served(platform)
    assert {n: after[n] - before[n] for n in after} == {"prod": 90, "canary": 10}


def test_auto_mode_splits_by_ready_instances(platform: Platform, group: dict[str, Any]) -> None:
    platform.ok("modify", "prod", "-Dmetadata.instance=2")
    platform.ok("group", "modify", GROUP, "--traffic-mode", "auto")
    gateway_weights(platform, {"prod": 2, "canary": 1})
    assert send(platform, group["AccessToken"], 90) == {"prod": 60, "canary": 30}


def test_pulling_the_canary_back_to_standalone(platform: Platform, group: dict[str, Any]) -> None:
    platform.ok("release", "canary", "--traffic-state", "standalone")
    gateway_weights(platform, {"prod": 2, "canary": 0})
    assert send(platform, group["AccessToken"], 30) == {"prod": 30, "canary": 0}


def test_the_group_goes_with_its_last_member(platform: Platform, group: dict[str, Any]) -> None:
    platform.ok("delete", "canary", "-y")
    platform.ok("delete", "prod", "-y")
    assert platform.json("group", "list") == []
    assert "not found" in platform.eascmd("group", "desc", GROUP).stderr
    url = f"http://{platform.gateway_url}/api/predict/{GROUP}/v2/models/simple/ready"
    wait_until(
        lambda: httpx.get(url, headers={"Authorization": group["AccessToken"]}).status_code == 404,
        timeout=60,
        what="the gateway to forget the group",
    )
