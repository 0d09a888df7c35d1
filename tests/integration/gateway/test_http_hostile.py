"""Hostile HTTP/1.1 clients against the gateway's listener, over raw sockets.

The gateway runs in this test process (GatewayThread), so the memory bounds are on this
process's peak RSS; the instances behind it are real servers.  The framing rules are
those of the processor's server (tests/integration/test_http_hostile.py), proven here
on the gateway's connection class, plus what only the gateway has: the token checked
before a large body is read, and the sequence scan of compressed bodies.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator

import pytest

from openeas.testing.gateway import GatewayThread
from openeas.transport.http1 import HttpLimits
from tests.integration.conftest import read_response, request_bytes
from tests.integration.gateway.conftest import Cluster, json_infer_body
from tests.integration.test_http_hostile import MiB, gzip_bomb, peak_rss

TOKEN = "hostile-token"
AUTH = {"Authorization": TOKEN}


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayThread]:
    with GatewayThread(http_limits=HttpLimits(header_timeout=1.0, body_timeout=60.0)) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def svc(gw: GatewayThread, cluster: Cluster) -> str:
    gw.publish("hostile", TOKEN, cluster.upstreams[:1])
    return "hostile"


@pytest.fixture
def conn(gw: GatewayThread) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", gw.http_port), timeout=30)
    yield sock
    sock.close()


def _infer(service: str) -> str:
    return f"/api/predict/{service}/v2/models/identity_fp32/infer"


def _json(body: bytes) -> str:
    return json.loads(body)["error"]


# -- the token before the body ----------------------------------------------------------


@pytest.mark.parametrize("token", [None, "wrong"])
def test_large_body_without_a_valid_token_is_not_buffered(
    conn: socket.socket, svc: str, token: str | None
) -> None:
    size = 128 * MiB
    auth = f"authorization: {token}\r\n" if token else ""
    head = f"POST {_infer(svc)} HTTP/1.1\r\n{auth}content-length: {size}\r\n\r\n"
    before = peak_rss(os.getpid())
    conn.sendall(head.encode())
    chunk = bytes(MiB)
    for _ in range(size // MiB):
        conn.sendall(chunk)
    status, headers_out, body = read_response(conn.makefile("rb"))
    assert status == 401 and "token" in _json(body)
    # the gateway read the 128 MiB and dropped them: it never held them
    assert peak_rss(os.getpid()) - before < 32 * MiB


def test_refusals_on_the_head_are_counted(gw: GatewayThread, svc: str) -> None:
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=30) as sock:
        sock.sendall(f"POST {_infer(svc)} HTTP/1.1\r\ncontent-length: 100000\r\n\r\n".encode())
        sock.sendall(bytes(100_000))
        assert read_response(sock.makefile("rb"))[0] == 401
    assert 'code="401",protocol="http",service="hostile"' in gw.metrics_text()


def test_large_body_with_the_token_is_forwarded(conn: socket.socket, svc: str) -> None:
    values = [1.0] * 30_000  # a body well over the 64 KiB read before the check
    body = json_infer_body(values)
    assert len(body) > 64 * 1024
    conn.sendall(request_bytes("POST", _infer(svc), body, AUTH))
    status, _, answer = read_response(conn.makefile("rb"))
    assert status == 200 and json.loads(answer)["outputs"][0]["data"] == values


def test_gzip_bomb_is_scanned_with_bounded_memory(conn: socket.socket, svc: str) -> None:
    """The sequence scan inflates at most 16 MiB of a compressed body; the instance
    refuses the bomb itself (400, its --http-max-input-size)."""
    bomb = gzip_bomb(512 * MiB)
    before = peak_rss(os.getpid())
    conn.sendall(request_bytes("POST", _infer(svc), bomb, {**AUTH, "Content-Encoding": "gzip"}))
    status, _, body = read_response(conn.makefile("rb"))
    assert status == 400 and "exceeds the maximum input size" in _json(body)
    assert peak_rss(os.getpid()) - before < 64 * MiB


# -- framing ----------------------------------------------------------------------------


def test_connect_is_a_json_405(conn: socket.socket) -> None:
    conn.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n")
    status, headers, body = read_response(conn.makefile("rb"))
    assert status == 405 and "CONNECT" in _json(body) and headers["connection"] == "close"


def test_long_url_is_414_and_many_headers_431(gw: GatewayThread, svc: str) -> None:
    for request, expected in (
        (request_bytes("GET", "/api/predict/" + "a" * 20_000, headers=AUTH), 414),
        (request_bytes("GET", "/", headers={f"x-{i}": "1" for i in range(101)}), 431),
        (request_bytes("GET", "/", headers={"x-big": "v" * 70_000}), 431),
    ):
        with socket.create_connection(("127.0.0.1", gw.http_port), timeout=30) as sock:
            sock.sendall(request)
            status, headers, body = read_response(sock.makefile("rb"))
            assert status == expected and _json(body) and headers["connection"] == "close"


def test_slow_head_is_408(conn: socket.socket) -> None:
    conn.sendall(b"GET /api/predict/hostile/v2/health/ready HTTP/1.1\r\n")
    started = time.monotonic()
    conn.settimeout(10)
    status, _, body = read_response(conn.makefile("rb"))
    assert status == 408 and "head" in _json(body)
    assert time.monotonic() - started < 5


def test_pipelined_garbage_after_a_request_is_answered_after_it(
    conn: socket.socket, svc: str
) -> None:
    conn.sendall(
        request_bytes("POST", _infer(svc), json_infer_body([1.0]), AUTH) + b"\x16\x03 junk\r\n\r\n"
    )
    reader = conn.makefile("rb")
    assert read_response(reader)[0] == 200
    status, headers, _ = read_response(reader)
    assert status == 400 and headers["connection"] == "close"


def test_h2c_upgrade_is_served_as_http11(conn: socket.socket, svc: str) -> None:
    upgrade = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": ""}
    path = f"/api/predict/{svc}/v2/health/ready"
    conn.sendall(
        request_bytes("GET", path, headers={**AUTH, **upgrade})
        + request_bytes("GET", path, headers=AUTH)
    )
    reader = conn.makefile("rb")
    assert [read_response(reader)[0] for _ in range(2)] == [200, 200]


def test_expect_continue_over_the_limit_is_413_at_once(conn: socket.socket, svc: str) -> None:
    conn.sendall(
        f"POST {_infer(svc)} HTTP/1.1\r\nauthorization: {TOKEN}\r\nexpect: 100-continue\r\n"
        "content-length: 100000000000\r\n\r\n".encode()
    )
    reader = conn.makefile("rb")
    status, headers, body = read_response(reader)
    assert status == 413 and "exceeds the gateway limit" in _json(body)
    assert reader.read() == b""


def test_client_that_never_reads_is_not_read(gw: GatewayThread) -> None:
    """Pipelined requests the gateway answers itself (no token: 401), answers unread:
    the gateway stops reading instead of buffering answers."""
    batch = request_bytes("GET", "/api/predict/hostile/v2/health/ready") * 500
    before = peak_rss(os.getpid())
    with socket.create_connection(("127.0.0.1", gw.http_port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(3)
        sent = 0
        try:
            while sent < 40 * MiB:
                sock.sendall(batch)
                sent += len(batch)
        except TimeoutError:
            pass  # the gateway stopped reading: the socket buffers are full
        assert sent < 24 * MiB, f"the gateway accepted {sent >> 20} MiB of requests"
        assert peak_rss(os.getpid()) - before < 64 * MiB
