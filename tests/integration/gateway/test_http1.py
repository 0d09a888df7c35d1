"""The gateway's own HTTP/1.1 listener: pipelining, chunked bodies, Expect, limits, hang-ups.

Raw sockets, so that the bytes on the wire are the test's, not a client library's.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

import openeas.gateway.gateway
from openeas.gateway import ServiceLimits
from openeas.testing.gateway import GatewayThread
from tests.integration.conftest import read_response, request_bytes, wait_until
from tests.integration.gateway.conftest import Cluster, gw_request, json_infer_body

TOKEN = "http1-token"
AUTH = {"Authorization": TOKEN}


def _request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    return request_bytes(method, path, body, {"Authorization": TOKEN, **(headers or {})}, version)


@pytest.fixture
def conn(gateway: GatewayThread) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", gateway.http_port), timeout=30)
    yield sock
    sock.close()


@pytest.fixture
def svc(gateway: GatewayThread, cluster: Cluster, service_name: str) -> str:
    gateway.publish(service_name, TOKEN, cluster.upstreams[:1])
    return service_name


def _infer_path(service: str, model: str = "identity_fp32") -> str:
    return f"/api/predict/{service}/v2/models/{model}/infer"


def _output(body: bytes) -> list[float]:
    return json.loads(body)["outputs"][0]["data"]


def test_pipelined_requests_are_answered_in_order(conn: socket.socket, svc: str) -> None:
    conn.sendall(
        _request("POST", _infer_path(svc), json_infer_body([1.0]))
        + _request("GET", "/api/predict/no-such-service/v2/health/ready")
        + _request("POST", _infer_path(svc), json_infer_body([2.0]))
        + _request("GET", f"/api/predict/{svc}/v2/health/ready")
    )
    reader = conn.makefile("rb")
    first, missing, second, ready = (read_response(reader) for _ in range(4))
    assert (first[0], _output(first[2])) == (200, [1.0])
    assert missing[0] == 404 and b"does not exist" in missing[2]
    assert (second[0], _output(second[2])) == (200, [2.0])
    assert ready[0] == 200


def test_chunked_body_after_100_continue(conn: socket.socket, svc: str) -> None:
    body = json_infer_body([5.0, 6.0])
    head = _request(
        "POST",
        _infer_path(svc),
        headers={"Transfer-Encoding": "chunked", "Expect": "100-continue"},
    )
    conn.sendall(head)
    reader = conn.makefile("rb")
    assert reader.readline() == b"HTTP/1.1 100 Continue\r\n"
    assert reader.readline() == b"\r\n"
    half = len(body) // 2
    for chunk in (body[:half], body[half:]):
        conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    conn.sendall(b"0\r\n\r\n")
    status, _, answer = read_response(reader)
    assert (status, _output(answer)) == (200, [5.0, 6.0])


@pytest.mark.parametrize(
    ("version", "headers"),
    [("HTTP/1.1", {"Connection": "close"}), ("HTTP/1.0", {})],
    ids=["close", "http10"],
)
def test_connection_closed_when_the_client_asks(
    conn: socket.socket, svc: str, version: str, headers: dict[str, str]
) -> None:
    conn.sendall(
        _request("GET", f"/api/predict/{svc}/v2/health/ready", headers=headers, version=version)
    )
    reader = conn.makefile("rb")
    status, answer_headers, _ = read_response(reader)
    assert status == 200 and answer_headers["connection"] == "close"
    assert reader.read() == b""  # the gateway closed its end


def test_malformed_request_is_a_json_400_and_closes(conn: socket.socket) -> None:
    conn.sendall(b"GET / HTTP/1.1\r\nHost gw\r\n\r\n")  # a header line without a colon
    reader = conn.makefile("rb")
    status, headers, body = read_response(reader)
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["error"].startswith("malformed HTTP request")
    assert reader.read() == b""


def test_body_over_the_limit_is_413(
    monkeypatch: pytest.MonkeyPatch, cluster: Cluster, service_name: str
) -> None:
    monkeypatch.setattr(openeas.gateway.gateway, "MAX_BODY_SIZE", 1000)
    with GatewayThread() as gw:
        gw.publish(service_name, TOKEN, cluster.upstreams[:1])
        with socket.create_connection(("127.0.0.1", gw.http_port), timeout=30) as sock:
            sock.sendall(_request("POST", _infer_path(service_name), b"x" * 2000))
            reader = sock.makefile("rb")
            status, headers, body = read_response(reader)
            assert status == 413 and headers["connection"] == "close"
            assert b"exceeds the gateway limit" in body
            assert reader.read() == b""


def test_client_hanging_up_mid_request_frees_the_instance(
    gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    upstream = cluster.upstreams[2]
    gateway.publish(service_name, TOKEN, [upstream])
    # a first request leaves an idle pooled connection: the next one takes the callback path
    warm = gw_request(gateway, "GET", f"/api/predict/{service_name}/v2/health/ready", headers=AUTH)
    assert warm.status == 200
    with socket.create_connection(("127.0.0.1", gateway.http_port), timeout=30) as sock:
        body = json_infer_body([1.0], batched=False)
        sock.sendall(_request("POST", _infer_path(service_name, "slow"), body))
        wait_until(lambda: gateway.in_flight(upstream.instance_id) == 1, what="request sent")
    wait_until(lambda: gateway.in_flight(upstream.instance_id) == 0, what="slot released")
    again = gw_request(gateway, "GET", f"/api/predict/{service_name}/v2/health/ready", headers=AUTH)
    assert again.status == 200


def test_keepalive_on_a_pooled_connection_is_408(
    gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    gateway.publish(
        service_name, TOKEN, cluster.upstreams[:1], limits=ServiceLimits(keepalive_ms=300)
    )
    warm = gw_request(gateway, "GET", f"/api/predict/{service_name}/v2/health/ready", headers=AUTH)
    assert warm.status == 200
    body = json_infer_body([3.0], batched=False)
    response = gw_request(gateway, "POST", _infer_path(service_name, "slow"), body, AUTH)
    assert response.status == 408 and "300 ms" in response.error()
    wait_until(lambda: gateway.in_flight("i0") == 0, what="in-flight count back to 0")
