"""Inference requests to one model share an upstream connection (HTTP/1.1 pipelining).

Each test has a gateway of its own, so that its connection pool holds only the test's
connections.  The ``slow`` model (1.5 s, four instances) keeps requests in flight long
enough to pile up behind each other; its WINDOW output shows that the instance ran them
at the same time.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
from collections.abc import Iterator

import pytest

from openeas.gateway import ServiceLimits
from openeas.testing.gateway import GatewayThread
from tests.integration.conftest import RawResponse, pending_requests, request_bytes, wait_until
from tests.integration.gateway.conftest import Cluster, gw_request, json_infer_body

TOKEN = "pipelining-token"
AUTH = {"Authorization": TOKEN}
SERVICE = "pipelined"


@pytest.fixture
def own_gateway(cluster: Cluster) -> Iterator[GatewayThread]:
    with GatewayThread() as gw:
        gw.publish(SERVICE, TOKEN, cluster.upstreams[:1])
        # one request first: the pool then holds one idle connection
        body = json_infer_body([0.0])
        path = f"/api/predict/{SERVICE}/v2/models/identity_fp32/infer"
        assert gw_request(gw, "POST", path, body, AUTH).status == 200
        assert gw.upstream_connections(cluster.upstreams[0]) == 1
        yield gw


def _slow(gw: GatewayThread, value: float) -> RawResponse:
    body = json_infer_body([value], batched=False)
    return gw_request(gw, "POST", f"/api/predict/{SERVICE}/v2/models/slow/infer", body, AUTH)


def _window(response: RawResponse) -> tuple[float, float]:
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    start, end = outputs["WINDOW"]
    return start, end


def test_requests_to_one_model_share_a_connection_and_run_together(
    own_gateway: GatewayThread, cluster: Cluster
) -> None:
    upstream = cluster.upstreams[0]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_slow, own_gateway, float(v)) for v in range(1, 5)]
        wait_until(lambda: own_gateway.in_flight("i0") == 4, what="four requests in flight")
        assert own_gateway.upstream_connections(upstream) == 1
        responses = [f.result(timeout=30) for f in futures]
    assert [r.status for r in responses] == [200] * 4, responses
    assert [r.json()["outputs"][0]["data"] for r in responses] == [[1.0], [2.0], [3.0], [4.0]]
    windows = [_window(r) for r in responses]
    assert max(s for s, _ in windows) < min(e for _, e in windows), windows  # overlapping
    assert own_gateway.upstream_connections(upstream) == 1


def test_other_requests_get_a_connection_of_their_own(
    own_gateway: GatewayThread, cluster: Cluster
) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_slow, own_gateway, 1.0)
        wait_until(lambda: own_gateway.in_flight("i0") == 1, what="the slow request in flight")
        # a metadata request does not wait behind the slow inference
        ready = gw_request(own_gateway, "GET", f"/api/predict/{SERVICE}/v2/models/slow", b"", AUTH)
        assert ready.status == 200 and not slow.done()
        assert own_gateway.upstream_connections(cluster.upstreams[0]) == 2
        assert slow.result(timeout=30).status == 200


def test_client_gone_leaves_the_requests_beside_it_alone(
    own_gateway: GatewayThread, cluster: Cluster
) -> None:
    gone = socket.create_connection(("127.0.0.1", own_gateway.http_port), timeout=30)
    path = f"/api/predict/{SERVICE}/v2/models/slow/infer"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        gone.sendall(request_bytes("POST", path, json_infer_body([1.0], batched=False), AUTH))
        wait_until(lambda: own_gateway.in_flight("i0") == 1, what="the first request in flight")
        staying = pool.submit(_slow, own_gateway, 2.0)
        wait_until(lambda: own_gateway.in_flight("i0") == 2, what="both requests in flight")
        wait_until(
            lambda: pending_requests(cluster.servers[0], "slow") >= 2,
            what="both requests at the instance",
        )
        assert own_gateway.upstream_connections(cluster.upstreams[0]) == 1  # they share it
        gone.close()
        wait_until(lambda: own_gateway.in_flight("i0") == 1, what="the gone client's release")
        response = staying.result(timeout=30)
    assert response.status == 200, response
    assert json.loads(response.body)["outputs"][0]["data"] == [2.0]
    # the shared connection was kept: the answer nobody waited for was dropped
    assert own_gateway.upstream_connections(cluster.upstreams[0]) == 1


def test_expired_requests_sharing_a_connection(
    own_gateway: GatewayThread, cluster: Cluster
) -> None:
    # keepalive far below the slow model's 1.5 s: both expire (408); the first leaves the
    # connection to the second, the second, with nobody left waiting, aborts it.  What is
    # left is the connection of the liveness probe that told 408 from 504 (kept, the
    # shared one would stay too, idle, had it not been aborted).
    upstream = cluster.upstreams[0]
    own_gateway.publish(SERVICE, TOKEN, [upstream], limits=ServiceLimits(keepalive_ms=400))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(_slow, own_gateway, float(v)) for v in (1, 2)]
        wait_until(lambda: own_gateway.in_flight("i0") == 2, what="both requests in flight")
        assert own_gateway.upstream_connections(upstream) == 1
        responses = [f.result(timeout=30) for f in futures]
    assert [r.status for r in responses] == [408, 408], responses
    assert own_gateway.upstream_connections(upstream) == 1
    body = json_infer_body([3.0])
    path = f"/api/predict/{SERVICE}/v2/models/identity_fp32/infer"
    assert gw_request(own_gateway, "POST", path, body, AUTH).status == 200
