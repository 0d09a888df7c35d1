"""rpc.keepalive (408), rate_limit (429), max_queue_size (450) and a silent instance (504)."""

from __future__ import annotations

import concurrent.futures

import pytest

from openeas.gateway import ServiceLimits
from openeas.testing.gateway import GatewayThread
from tests.integration.conftest import RawResponse, wait_until
from tests.integration.gateway.conftest import (
    Cluster,
    SilentInstance,
    gw_request,
    json_infer_body,
)

TOKEN = "limits-token"
AUTH = {"Authorization": TOKEN}


def _slow(gateway: GatewayThread, name: str) -> RawResponse:
    body = json_infer_body([3.0], batched=False)
    return gw_request(gateway, "POST", f"/api/predict/{name}/v2/models/slow/infer", body, AUTH)


def test_keepalive_exceeded_is_408(
    gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    gateway.publish(
        service_name, TOKEN, cluster.upstreams[:1], limits=ServiceLimits(keepalive_ms=300)
    )
    response = _slow(gateway, service_name)
    assert response.status == 408, response
    assert "rpc.keepalive" in response.error() and "300 ms" in response.error()
    # the aborted request no longer counts against the instance
    wait_until(lambda: gateway.in_flight("i0") == 0, what="in-flight count back to 0")
    # requests within the keepalive still work on the same service
    fast = gw_request(
        gateway,
        "POST",
        f"/api/predict/{service_name}/v2/models/identity_fp32/infer",
        json_infer_body([1.0]),
        AUTH,
    )
    assert fast.status == 200


def test_rate_limit_is_429(gateway: GatewayThread, cluster: Cluster, service_name: str) -> None:
    # one request every two seconds, bursts of one
    gateway.publish(service_name, TOKEN, cluster.upstreams, limits=ServiceLimits(rate_limit=0.5))
    path = f"/api/predict/{service_name}/v2/health/ready"
    statuses = [gw_request(gateway, "GET", path, headers=AUTH).status for _ in range(4)]
    assert statuses[0] == 200
    assert 429 in statuses, statuses
    response = gw_request(gateway, "GET", path, headers=AUTH)
    if response.status == 429:
        assert "rate limit" in response.error()


def test_full_queue_is_450(gateway: GatewayThread, cluster: Cluster, service_name: str) -> None:
    # one instance taking one request at a time, one more may wait: a flood of 6 overflows
    limits = ServiceLimits(max_concurrency=1, max_queue_size=1, keepalive_ms=30_000)
    gateway.publish(service_name, TOKEN, cluster.upstreams[:1], limits=limits)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_slow, gateway, service_name) for _ in range(6)]
        responses = [f.result(60) for f in futures]
    statuses = sorted(r.status for r in responses)
    assert statuses.count(200) >= 2, statuses  # the one executing and the one queued
    assert 450 in statuses, statuses
    assert set(statuses) <= {200, 450}, statuses
    rejected = next(r for r in responses if r.status == 450)
    assert "rpc.max_queue_size" in rejected.error()
    text = gateway.metrics_text()
    assert (
        f'openeas_gateway_requests_total{{code="450",protocol="http",service="{service_name}"}}'
        in text
    )


def test_queued_requests_wait_for_a_free_instance(
    gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    limits = ServiceLimits(max_concurrency=1, max_queue_size=8, keepalive_ms=30_000)
    gateway.publish(service_name, TOKEN, cluster.upstreams[:2], limits=limits)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: _slow(gateway, service_name), range(4)))
    assert [r.status for r in responses] == [200] * 4


def test_silent_instance_is_504(
    gateway: GatewayThread, silent_instance: SilentInstance, service_name: str
) -> None:
    gateway.publish(
        service_name,
        TOKEN,
        [silent_instance.upstream("mute")],
        limits=ServiceLimits(keepalive_ms=500),
    )
    response = gw_request(
        gateway, "GET", f"/api/predict/{service_name}/v2/health/ready", headers=AUTH
    )
    assert response.status == 504, response
    assert "does not answer" in response.error() and "mute" in response.error()


@pytest.mark.parametrize("status", [408, 504])
def test_timeouts_leave_no_request_in_flight(
    gateway: GatewayThread,
    cluster: Cluster,
    silent_instance: SilentInstance,
    service_name: str,
    status: int,
) -> None:
    upstream = cluster.upstreams[1] if status == 408 else silent_instance.upstream("mute")
    gateway.publish(service_name, TOKEN, [upstream], limits=ServiceLimits(keepalive_ms=200))
    assert _slow(gateway, service_name).status == status
    wait_until(
        lambda: gateway.in_flight(upstream.instance_id) == 0, what="in-flight count back to 0"
    )


def test_queued_request_expires_with_408(
    gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    """An instance whose only slot an idle gRPC stream holds: a queued request waits no
    longer than rpc.keepalive (HTTP 408, gRPC DEADLINE_EXCEEDED), not forever."""
    import queue
    import time

    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    limits = ServiceLimits(max_concurrency=1, max_queue_size=8, keepalive_ms=500)
    gateway.publish(service_name, TOKEN, cluster.upstreams[:1], limits=limits)
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    results: queue.Queue[object] = queue.Queue()
    client.start_stream(
        callback=lambda result, error: results.put(error),
        headers={"authorization": TOKEN, "x-eas-service": service_name},
    )
    try:
        data = grpcclient.InferInput("INPUT0", [1, 1], "FP32")
        data.set_data_from_numpy(np.ones((1, 1), dtype=np.float32))
        client.async_stream_infer("identity_fp32", [data])
        assert results.get(timeout=30) is None  # the stream holds the slot from now on
        started = time.monotonic()
        response = gw_request(
            gateway,
            "POST",
            f"/api/predict/{service_name}/v2/models/identity_fp32/infer",
            json_infer_body([1.0]),
            AUTH,
            timeout=20,
        )
        assert response.status == 408, response
        assert "rpc.keepalive" in response.error() and "500 ms" in response.error()
        assert time.monotonic() - started < 10
        unary = grpcclient.InferenceServerClient(gateway.grpc_url)
        try:
            with pytest.raises(InferenceServerException) as info:
                unary.infer(
                    "identity_fp32",
                    [data],
                    headers={"authorization": TOKEN, "x-eas-service": service_name},
                    client_timeout=20,
                )
        finally:
            unary.close()
        assert str(info.value.status()) == "StatusCode.DEADLINE_EXCEEDED", info.value
        assert "rpc.keepalive" in info.value.message()
    finally:
        client.stop_stream()
        client.close()
