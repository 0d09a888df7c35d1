"""The gateway's gRPC pass-through with the real tritonclient.grpc."""

from __future__ import annotations

import queue
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from openeas.gateway import ServiceLimits
from openeas.testing.gateway import GatewayThread
from tests.integration.gateway.conftest import Cluster, SilentInstance, dead_upstream

TOKEN = "grpc-token"


@pytest.fixture
def svc(gateway: GatewayThread, cluster: Cluster, service_name: str) -> str:
    gateway.publish(service_name, TOKEN, cluster.upstreams)
    return service_name


@pytest.fixture
def client(gateway: GatewayThread) -> Any:
    c = grpcclient.InferenceServerClient(gateway.grpc_url)
    yield c
    c.close()


def _identity_input(data: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    return inp


def _code(info: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(info.value.status())


def test_infer_and_metadata_by_service_metadata(client: Any, svc: str, cluster: Cluster) -> None:
    headers = {"authorization": TOKEN, "x-eas-service": svc}
    assert client.is_server_live(headers=headers)
    assert client.is_model_ready("identity_fp32", headers=headers)
    assert client.get_model_metadata("add_sub", headers=headers).name == "add_sub"
    assert client.get_model_config("add_sub", headers=headers).config.name == "add_sub"
    before = cluster.success_counts("identity_fp32")
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    for algorithm in (None, "gzip"):
        for _ in range(3):
            result = client.infer(
                "identity_fp32",
                [_identity_input(data)],
                headers=headers,
                compression_algorithm=algorithm,
            )
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    after = cluster.success_counts("identity_fp32")
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 2, 2]  # spread per call
    stats = client.get_inference_statistics("identity_fp32", headers=headers)
    assert stats.model_stats[0].name == "identity_fp32"


def test_service_found_from_token(
    client: Any, gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    token = f"token-of-{service_name}"
    gateway.publish(service_name, token, cluster.upstreams)
    data = np.ones((1, 3), dtype=np.float32)
    result = client.infer(
        "identity_fp32", [_identity_input(data)], headers={"authorization": token}
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_errors(client: Any, gateway: GatewayThread, svc: str, cluster: Cluster) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.is_server_live(headers={"x-eas-service": svc})
    assert _code(info) == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as info:
        client.is_server_live(headers={"x-eas-service": svc, "authorization": "wrong"})
    assert _code(info) == "StatusCode.UNAUTHENTICATED" and svc in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.is_server_live(headers={"x-eas-service": "no-such-svc", "authorization": TOKEN})
    assert _code(info) == "StatusCode.NOT_FOUND"
    # the instance's own errors pass through
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata(
            "no_such_model", headers={"x-eas-service": svc, "authorization": TOKEN}
        )
    assert _code(info) == "StatusCode.NOT_FOUND" and "no_such_model" in info.value.message()
    # a token shared by two services needs x-eas-service
    gateway.publish(svc + "-twin", TOKEN, cluster.upstreams)
    with pytest.raises(InferenceServerException) as info:
        client.is_server_live(headers={"authorization": TOKEN})
    assert _code(info) == "StatusCode.NOT_FOUND" and "x-eas-service" in info.value.message()


def test_unavailable_and_deadline(
    client: Any,
    gateway: GatewayThread,
    cluster: Cluster,
    silent_instance: SilentInstance,
    service_name: str,
) -> None:
    headers = {"authorization": TOKEN, "x-eas-service": service_name}
    gateway.publish(service_name, TOKEN, [])
    with pytest.raises(InferenceServerException) as info:
        client.is_server_live(headers=headers)
    assert _code(info) == "StatusCode.UNAVAILABLE" and "no ready instance" in info.value.message()
    gateway.publish(
        service_name, TOKEN, cluster.upstreams[:1], limits=ServiceLimits(keepalive_ms=300)
    )
    data = np.ones(2, dtype=np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("slow", [_identity_input(data)], headers=headers)
    assert _code(info) == "StatusCode.DEADLINE_EXCEEDED" and "rpc.keepalive" in info.value.message()
    gateway.publish(service_name, TOKEN, cluster.upstreams, limits=ServiceLimits(rate_limit=0.5))
    codes = []
    for _ in range(4):
        try:
            client.is_server_live(headers=headers)
            codes.append("OK")
        except InferenceServerException as exc:
            codes.append(str(exc.status()))
    assert codes[0] == "OK" and "StatusCode.RESOURCE_EXHAUSTED" in codes, codes


def test_grpc_sequence_affinity(client: Any, svc: str, cluster: Cluster) -> None:
    headers = {"authorization": TOKEN, "x-eas-service": svc}
    data = np.ones((1, 2), dtype=np.float32)
    for sequence_id in (7, 8):
        before = cluster.success_counts("identity_fp32")
        for step in range(4):
            client.infer(
                "identity_fp32",
                [_identity_input(data)],
                headers=headers,
                sequence_id=sequence_id,
                sequence_start=step == 0,
                sequence_end=step == 3,
            )
        after = cluster.success_counts("identity_fp32")
        assert sorted(a - b for a, b in zip(after, before, strict=True)) == [0, 0, 4]


def test_streaming(client: Any, svc: str) -> None:
    results: queue.Queue[Any] = queue.Queue()
    client.start_stream(
        callback=lambda result, error: results.put((result, error)),
        headers={"authorization": TOKEN, "x-eas-service": svc},
    )
    try:
        data = np.array([1.5, 2.5], dtype=np.float32)
        repeat = grpcclient.InferInput("REPEAT", [1], "INT32")
        repeat.set_data_from_numpy(np.array([3], dtype=np.int32))
        for request_id in ("a", "b"):
            client.async_stream_infer(
                "repeat_decoupled", [_identity_input(data), repeat], request_id=request_id
            )
        got = [results.get(timeout=30) for _ in range(6)]
    finally:
        client.stop_stream()
    assert all(error is None for _, error in got), got
    indexes = sorted(
        (result.get_response().id, int(result.as_numpy("INDEX")[0])) for result, _ in got
    )
    assert indexes == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    for result, _ in got:
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_stream_auth_failure(client: Any, svc: str) -> None:
    results: queue.Queue[Any] = queue.Queue()
    client.start_stream(
        callback=lambda result, error: results.put((result, error)),
        headers={"authorization": "wrong", "x-eas-service": svc},
    )
    try:
        repeat = grpcclient.InferInput("REPEAT", [1], "INT32")
        repeat.set_data_from_numpy(np.array([1], dtype=np.int32))
        try:
            client.async_stream_infer(
                "repeat_decoupled", [_identity_input(np.ones(1, np.float32)), repeat]
            )
        except InferenceServerException:
            pass  # the stream may already have failed; the error reaches the callback
        _, error = results.get(timeout=30)
    finally:
        client.stop_stream()
    assert error is not None and "UNAUTHENTICATED" in str(error.status())


def test_unknown_grpc_service_is_unimplemented(gateway: GatewayThread) -> None:
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        call = channel.unary_unary("/other.Service/Method")
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_large_messages_both_ways(client: Any, svc: str) -> None:
    # 8 MB each way: more than any HTTP/2 window on the path, in many frames
    headers = {"authorization": TOKEN, "x-eas-service": svc}
    data = np.random.default_rng(3).random((1, 2 * 1024 * 1024), dtype=np.float32)
    result = client.infer("identity_fp32", [_identity_input(data)], headers=headers)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_large_messages_on_a_stream(client: Any, svc: str) -> None:
    results: queue.Queue[Any] = queue.Queue()
    client.start_stream(
        callback=lambda result, error: results.put((result, error)),
        headers={"authorization": TOKEN, "x-eas-service": svc},
    )
    rng = np.random.default_rng(4)
    sent = [rng.random((1, n), dtype=np.float32) for n in (1_500_000, 10, 700_000)]
    try:
        for n, data in enumerate(sent):
            client.async_stream_infer("identity_fp32", [_identity_input(data)], request_id=str(n))
        got = [results.get(timeout=60) for _ in sent]
    finally:
        client.stop_stream()
    assert all(error is None for _, error in got), got
    by_id = {result.get_response().id: result.as_numpy("OUTPUT0") for result, _ in got}
    for n, data in enumerate(sent):
        np.testing.assert_array_equal(by_id[str(n)], data)


def test_connect_failure_is_retried_on_another_instance(
    client: Any, gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    gateway.publish(
        service_name, TOKEN, [dead_upstream("dead0"), cluster.upstreams[0], dead_upstream("dead1")]
    )
    headers = {"authorization": TOKEN, "x-eas-service": service_name}
    before = cluster.success_counts("identity_fp32")
    data = np.full((1, 3), 7.0, dtype=np.float32)
    for _ in range(6):
        result = client.infer("identity_fp32", [_identity_input(data)], headers=headers)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    assert cluster.success_counts("identity_fp32")[0] - before[0] == 6
