"""Hold at zero: a route with ``hold`` and no instance keeps requests in the service's
queue (HTTP, gRPC unary and streaming) until an instance is published, bounded by
``rpc.keepalive`` (408) and ``rpc.max_queue_size`` (450); without ``hold``, 503."""

from __future__ import annotations

import concurrent.futures
import queue
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from openeas.gateway import ServiceLimits
from openeas.testing.gateway import GatewayThread
from tests.integration.conftest import RawResponse, wait_until
from tests.integration.gateway.conftest import Cluster, gw_request, json_infer_body

TOKEN = "hold-token"
AUTH = {"Authorization": TOKEN}
GRPC_AUTH = {"authorization": TOKEN}


def _identity(gateway: GatewayThread, name: str, timeout: float = 60) -> RawResponse:
    body = json_infer_body([1.0, 2.0])
    return gw_request(
        gateway,
        "POST",
        f"/api/predict/{name}/v2/models/identity_fp32/infer",
        body,
        AUTH,
        timeout=timeout,
    )


def _held(gateway: GatewayThread, name: str, count: int) -> None:
    wait_until(lambda: gateway.waiting(name) == count, what=f"{count} held requests")


def test_without_hold_a_service_without_instance_is_503(
    gateway: GatewayThread, service_name: str
) -> None:
    gateway.publish(service_name, TOKEN, [])
    response = _identity(gateway, service_name)
    assert response.status == 503, response
    assert "no ready instance" in response.error()


def test_a_held_http_request_waits_and_succeeds_once_an_instance_is_published(
    gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    limits = ServiceLimits(keepalive_ms=60_000)
    gateway.publish(service_name, TOKEN, [], limits=limits, hold=True)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_identity, gateway, service_name) for _ in range(3)]
        _held(gateway, service_name, 3)
        assert not any(f.done() for f in futures)
        gateway.publish(service_name, TOKEN, cluster.upstreams[:1], limits=limits, hold=True)
        responses = [f.result(60) for f in futures]
    assert [r.status for r in responses] == [200, 200, 200], responses
    assert responses[0].json()["outputs"][0]["data"] == [1.0, 2.0]
    assert gateway.waiting(service_name) == 0


def test_a_held_request_gets_408_after_keepalive(gateway: GatewayThread, service_name: str) -> None:
    gateway.publish(service_name, TOKEN, [], limits=ServiceLimits(keepalive_ms=400), hold=True)
    response = _identity(gateway, service_name)
    assert response.status == 408, response
    assert "exceeded rpc.keepalive (400 ms)" in response.error()
    assert gateway.waiting(service_name) == 0


def test_held_requests_beyond_max_queue_size_get_450(
    gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    limits = ServiceLimits(keepalive_ms=60_000, max_queue_size=2)
    gateway.publish(service_name, TOKEN, [], limits=limits, hold=True)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(_identity, gateway, service_name) for _ in range(2)]
        _held(gateway, service_name, 2)
        refused = _identity(gateway, service_name)
        assert refused.status == 450, refused
        assert "rpc.max_queue_size is 2" in refused.error()
        gateway.publish(service_name, TOKEN, cluster.upstreams[:1], limits=limits, hold=True)
        assert [f.result(60).status for f in futures] == [200, 200]


def _grpc_identity(gateway: GatewayThread, name: str) -> Any:
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    try:
        data = np.array([[1.0, 2.0]], dtype=np.float32)
        inp = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
        inp.set_data_from_numpy(data)
        headers = {**GRPC_AUTH, "x-eas-service": name}
        return client.infer("identity_fp32", [inp], headers=headers).as_numpy("OUTPUT0")
    finally:
        client.close()


def test_held_grpc_unary_and_stream_calls_wait_for_an_instance(
    gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    limits = ServiceLimits(keepalive_ms=60_000)
    gateway.publish(service_name, TOKEN, [], limits=limits, hold=True)
    results: queue.Queue[Any] = queue.Queue()
    stream = grpcclient.InferenceServerClient(gateway.grpc_url)
    stream.start_stream(
        callback=lambda result, error: results.put((result, error)),
        headers={**GRPC_AUTH, "x-eas-service": service_name},
    )
    try:
        data = np.array([1.5, 2.5], dtype=np.float32)
        value = grpcclient.InferInput("INPUT0", [2], "FP32")
        value.set_data_from_numpy(data)
        repeat = grpcclient.InferInput("REPEAT", [1], "INT32")
        repeat.set_data_from_numpy(np.array([2], dtype=np.int32))
        stream.async_stream_infer("repeat_decoupled", [value, repeat], request_id="s")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            unary = pool.submit(_grpc_identity, gateway, service_name)
            _held(gateway, service_name, 2)  # the stream's and the unary call's
            assert results.empty()
            gateway.publish(service_name, TOKEN, cluster.upstreams[:1], limits=limits, hold=True)
            np.testing.assert_array_equal(unary.result(60), [[1.0, 2.0]])
        got = [results.get(timeout=60) for _ in range(2)]
    finally:
        stream.stop_stream()
        stream.close()
    assert all(error is None for _, error in got), got
    assert sorted(int(r.as_numpy("INDEX")[0]) for r, _ in got) == [0, 1]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_held_tritonclient_request_is_served(
    gateway: GatewayThread, cluster: Cluster, service_name: str, protocol: str
) -> None:
    """The real clients' defaults (tritonclient's own timeouts) live with the wait."""
    limits = ServiceLimits(keepalive_ms=60_000)
    gateway.publish(service_name, TOKEN, [], limits=limits, hold=True)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        if protocol == "grpc":
            future = pool.submit(_grpc_identity, gateway, service_name)
        else:
            future = pool.submit(_http_identity, gateway, service_name)
        _held(gateway, service_name, 1)
        gateway.publish(service_name, TOKEN, cluster.upstreams[1:2], limits=limits, hold=True)
        np.testing.assert_array_equal(future.result(60), [[1.0, 2.0]])


def _http_identity(gateway: GatewayThread, name: str) -> Any:
    client = httpclient.InferenceServerClient(gateway.http_url(name), network_timeout=60)
    try:
        inp = httpclient.InferInput("INPUT0", [1, 2], "FP32")
        inp.set_data_from_numpy(np.array([[1.0, 2.0]], dtype=np.float32))
        return client.infer("identity_fp32", [inp], headers=AUTH).as_numpy("OUTPUT0")
    finally:
        client.close()
