"""Hostile HTTP/1.1 clients against a real ``openeas-server``, over raw sockets.

Each attack gets a clear answer (a status and ``{"error": ...}``) or a closed
connection, the server keeps serving, and where an attack is about memory the server's
peak RSS (``VmHWM``) grows by less than a stated bound.  The framing rules themselves are
tested in memory in tests/unit/test_http1_framing.py; this module proves them on a
real process and socket.
"""

from __future__ import annotations

import json
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from openeas.testing.onnx_models import ADD_SUB_CONFIG, write_add_sub_model, write_model_config
from openeas.testing.server import ServerProcess
from tests.integration.conftest import raw_request, read_response, request_bytes

INFER = "/v2/models/simple/infer"
ZEROS = [0.0] * 16
GOOD = json.dumps(
    {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": [1, 16], "data": ZEROS}
            for n in ("INPUT0", "INPUT1")
        ]
    }
).encode()
MiB = 1024 * 1024


def peak_rss(pid: int) -> int:
    """The peak resident set size of process ``pid`` so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def gzip_bomb(size: int) -> bytes:
    """A gzip stream of ``size`` zero bytes, built without holding them."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(MiB)
    parts = [compressor.compress(chunk) for _ in range(size // MiB)]
    parts.append(compressor.flush())
    return b"".join(parts)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile-repo")
    write_add_sub_model(root / "simple" / "1", dims=(16,))
    write_model_config(root / "simple", ADD_SUB_CONFIG)
    return root


@pytest.fixture(scope="module")
def server(launch, repo) -> ServerProcess:
    return launch(
        repo,
        "--http-header-timeout=1",
        "--http-body-timeout=2",
        "--http-max-connections-per-client=64",
    )


@pytest.fixture
def conn(server: ServerProcess) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
    yield sock
    sock.close()


def _assert_serving(server: ServerProcess) -> None:
    assert server.process.poll() is None, "the server died"
    assert raw_request(server, "POST", INFER, GOOD).status == 200


def _closed(sock: socket.socket) -> bool:
    """Whether the peer closed ``sock`` (what it still sent is read and dropped)."""
    try:
        while data := sock.recv(65536):
            del data
    except (ConnectionResetError, TimeoutError):
        return True
    return True


# -- limits of the head ------------------------------------------------------------------


def test_long_url_is_414(conn: socket.socket, server: ServerProcess) -> None:
    conn.sendall(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n")
    status, headers, body = read_response(conn.makefile("rb"))
    assert status == 414 and headers["connection"] == "close"
    assert "16384" in json.loads(body)["error"]
    _assert_serving(server)


@pytest.mark.parametrize(
    "fields",
    [{"x-big": "v" * 70_000}, {f"x-h{i}": "1" for i in range(101)}],
    ids=["large", "many"],
)
def test_large_or_many_headers_are_431(
    conn: socket.socket, server: ServerProcess, fields: dict[str, str]
) -> None:
    conn.sendall(request_bytes("GET", "/v2/health/live", headers=fields))
    status, headers, body = read_response(conn.makefile("rb"))
    assert status == 431 and headers["connection"] == "close" and json.loads(body)["error"]
    _assert_serving(server)


@pytest.mark.parametrize("what", ["url", "headers"])
def test_endless_head_is_cut_off_with_bounded_memory(
    conn: socket.socket, server: ServerProcess, what: str
) -> None:
    """48 MB of URL, or of tiny headers, sent in pieces: refused early, memory bounded."""
    before = peak_rss(server.process.pid)
    conn.sendall(b"GET /" if what == "url" else b"GET / HTTP/1.1\r\n")
    piece = b"a" * 65536 if what == "url" else b"x: y\r\n" * 10_000
    sent = 0
    try:
        while sent < 48 * MiB:
            conn.sendall(piece)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert sent < 4 * MiB, f"the server read {sent} bytes of one request head"
    assert _closed(conn)
    assert peak_rss(server.process.pid) - before < 32 * MiB
    _assert_serving(server)


# -- slow clients (slowloris) -----------------------------------------------------------


def test_trickling_heads_and_bodies_are_closed(server: ServerProcess) -> None:
    """Connections that send a byte at a time get 408 and are closed within the head
    (1 s) or body (2 s) deadline, while good requests keep being served."""
    heads = [socket.create_connection(("127.0.0.1", server.http_port)) for _ in range(20)]
    bodies = [socket.create_connection(("127.0.0.1", server.http_port)) for _ in range(5)]
    for sock in bodies:
        sock.sendall(b"POST " + INFER.encode() + b" HTTP/1.1\r\ncontent-length: 1000\r\n\r\n")
    head = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 100
    started = time.monotonic()
    open_ = heads + bodies
    for i in range(len(head)):
        if time.monotonic() - started > 20:
            break
        for sock in list(open_):
            try:
                sock.send(head[i : i + 1] if sock in heads else b"z")
            except OSError:
                open_.remove(sock)
        assert raw_request(server, "GET", "/v2/health/live").status == 200
        time.sleep(0.1)  # the attack's own pace, not synchronisation
    assert not open_, f"{len(open_)} slow connections still open after 20 s"
    for sock in heads + bodies:
        sock.settimeout(5)
        status, _, body = read_response(sock.makefile("rb"))
        assert status == 408 and "took longer than" in json.loads(body)["error"]
        sock.close()


def test_connections_per_client_are_capped(server: ServerProcess) -> None:
    socks = []
    try:
        for _ in range(64):
            socks.append(socket.create_connection(("127.0.0.1", server.http_port), timeout=10))
        for sock in socks:  # every one of them is being served
            sock.sendall(request_bytes("GET", "/v2/health/live"))
            assert read_response(sock.makefile("rb"))[0] == 200
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as extra:
            status, headers, body = read_response(extra.makefile("rb"))
            assert status == 503 and "too many open connections" in json.loads(body)["error"]
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + 10
    while raw_request(server, "GET", "/v2/health/live").status != 200:
        assert time.monotonic() < deadline, "closed connections still count"


# -- bodies -----------------------------------------------------------------------------


def test_gzip_bomb_is_400_with_bounded_memory(server: ServerProcess) -> None:
    bomb = gzip_bomb(512 * MiB)
    before = peak_rss(server.process.pid)
    response = raw_request(server, "POST", INFER, bomb, {"Content-Encoding": "gzip"})
    assert response.status == 400
    assert "exceeds the maximum input size" in response.error()
    # the server inflates at most --http-max-input-size (64 MiB) + 1 bytes
    assert peak_rss(server.process.pid) - before < 150 * MiB
    _assert_serving(server)


def test_expect_continue_with_too_large_body_is_refused_at_once(
    conn: socket.socket, server: ServerProcess
) -> None:
    conn.sendall(
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
        b"content-length: 100000000000\r\n\r\n"
    )
    reader = conn.makefile("rb")
    status, headers, body = read_response(reader)
    assert status == 400 and headers["connection"] == "close"  # Triton's status for this
    assert "maximum input size" in json.loads(body)["error"]
    assert reader.read() == b""


def test_shape_over_32_dimensions_is_400(server: ServerProcess) -> None:
    shape = [1] * 33
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": shape, "data": [0.0]}]}
    )
    response = raw_request(server, "POST", INFER, body)
    assert response.status == 400, response
    assert "33 dimensions" in response.error()


# -- framing --------------------------------------------------------------------------


def test_pipelined_garbage_after_an_infer_is_answered_after_it(
    conn: socket.socket, server: ServerProcess
) -> None:
    conn.sendall(request_bytes("POST", INFER, GOOD) + b"\x16\x03\x01 garbage\r\n\r\n")
    reader = conn.makefile("rb")
    assert read_response(reader)[0] == 200
    status, headers, _ = read_response(reader)
    assert status == 400 and headers["connection"] == "close"
    assert reader.read() == b""


@pytest.mark.parametrize(
    "upgrade",
    [
        {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABk"},
        {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
    ],
    ids=["h2c", "websocket"],
)
def test_upgrade_requests_are_served_as_http11(
    conn: socket.socket, server: ServerProcess, upgrade: dict[str, str]
) -> None:
    conn.sendall(
        request_bytes("GET", "/v2/health/live", headers=upgrade)
        + request_bytes("POST", INFER, GOOD)
    )
    reader = conn.makefile("rb")
    status, headers, _ = read_response(reader)
    assert status == 200 and "upgrade" not in headers
    assert read_response(reader)[0] == 200  # the connection goes on as HTTP/1.1


def test_connect_is_405(conn: socket.socket) -> None:
    conn.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n")
    status, headers, body = read_response(conn.makefile("rb"))
    assert status == 405 and "CONNECT" in json.loads(body)["error"]


def test_client_that_never_reads_does_not_grow_memory(server: ServerProcess) -> None:
    """Pipelined requests from a client that reads no answer: the server stops reading
    it once its answers back up, so neither the bytes it accepts nor its memory grow."""
    before = peak_rss(server.process.pid)
    batch = request_bytes("POST", INFER, GOOD) * 100  # the direct route
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(3)
        sent = 0
        try:
            while sent < 40 * MiB:
                sock.sendall(batch)
                sent += len(batch)
        except TimeoutError:
            pass  # the server stopped reading: the socket buffers are full
        # without back-pressure the server reads all 40 MB and holds every answer
        assert sent < 24 * MiB, f"the server accepted {sent >> 20} MiB of requests"
        assert peak_rss(server.process.pid) - before < 64 * MiB
    _assert_serving(server)
