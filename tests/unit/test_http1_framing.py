"""HTTP/1.1 framing under hostile input, in memory: the processor's and the gateway's
connections over a fake transport (no socket), as uvicorn's tests/protocols do.

Each test feeds raw bytes to a connection and reads what it wrote: limits (414, 431),
refusals answered after the requests before them, protocol upgrades served as HTTP/1.1,
``CONNECT``, ``Expect: 100-continue`` over the limit, flow control, and the gateway's
token check before a large body is buffered.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from openeas.gateway.http1 import GatewayHttpServer
from openeas.server.frontends.httpserver import HttpServer
from openeas.transport.http1 import HttpLimits


class FakeTransport:
    """Collects writes; records reading pauses; closes on request."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("10.0.0.1", 1234), "sockname": ("10.0.0.2", 80)}.get(name, default)

    def responses(self) -> list[tuple[int, dict[str, str], bytes]]:
        """The complete responses written (content-length framed)."""
        out = []
        data = bytes(self.written)
        while data:
            head, _, rest = data.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
            length = int(headers.get("content-length", "0"))
            out.append((status, headers, rest[:length]))
            data = rest[length:]
        return out


class App:
    """A direct app answering each request with its path, held until released."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop
        self.hold = loop is not None
        self.gates: list[asyncio.Future[None]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("only the direct route is used")

    def direct(self, method: str, path: str, headers: Any, body: bytes) -> Any:
        return self._answer(path, body)

    async def _answer(self, path: str, body: bytes) -> tuple[int, bytes, bytes]:
        if self.hold:
            gate = self.loop.create_future()  # type: ignore[union-attr]  # started eagerly
            self.gates.append(gate)
            await gate
        return 200, b"content-type: text/plain\r\n", f"{path} {len(body)}".encode()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


def _sock() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


LIMITS = HttpLimits(max_url_size=1024, max_header_size=4096, max_header_count=20)


def processor(loop: asyncio.AbstractEventLoop, app: App | None = None, **kw: Any) -> Any:
    server = HttpServer(app or App(), _sock(), limits=LIMITS, max_body_size=10_000, **kw)
    server.loop = loop
    transport = FakeTransport()
    connection = server.connection_type(server)
    connection.connection_made(transport)
    return connection, transport


def settle(loop: asyncio.AbstractEventLoop) -> None:
    """Run the loop until the callbacks scheduled so far (and theirs) have run."""
    for _ in range(5):
        loop.run_until_complete(asyncio.sleep(0))


GET = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n"


def test_long_url_is_414(loop: asyncio.AbstractEventLoop) -> None:
    connection, transport = processor(loop)
    connection.data_received(b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n")
    [(status, headers, body)] = transport.responses()
    assert status == 414 and "1024" in json.loads(body)["error"]
    assert headers["connection"] == "close" and transport.closed


@pytest.mark.parametrize(
    "head",
    [
        b"x-big: " + b"v" * 5000 + b"\r\n",  # one large header
        b"".join(b"x-h%d: 1\r\n" % i for i in range(30)),  # too many headers
    ],
)
def test_large_or_many_headers_are_431(loop: asyncio.AbstractEventLoop, head: bytes) -> None:
    connection, transport = processor(loop)
    connection.data_received(b"GET / HTTP/1.1\r\n" + head + b"\r\n")
    [(status, _, body)] = transport.responses()
    assert status == 431 and "error" in json.loads(body)
    assert transport.closed


def test_head_arriving_in_pieces_is_refused_before_it_is_whole(
    loop: asyncio.AbstractEventLoop,
) -> None:
    connection, transport = processor(loop)
    connection.data_received(b"GET / HTTP/1.1\r\nx-big: ")
    sent = 0
    while not transport.closed and sent < 10_000_000:
        connection.data_received(b"v" * 1000)
        sent += 1000
    assert transport.closed and sent < 4096 + 1024 + 2048, sent
    assert transport.responses()[0][0] == 431


def test_refusal_waits_for_the_answers_before_it(loop: asyncio.AbstractEventLoop) -> None:
    app = App(loop)
    connection, transport = processor(loop, app)
    connection.data_received(b"POST /v2/models/m/infer HTTP/1.1\r\ncontent-length: 2\r\n\r\nab")
    connection.data_received(b"garbage\x00\r\n\r\n")
    settle(loop)
    assert transport.written == b"" and not transport.closed and not transport.reading
    app.gates[0].set_result(None)
    settle(loop)
    statuses = [status for status, _, _ in transport.responses()]
    assert statuses == [200, 400] and transport.closed


@pytest.mark.parametrize(
    "upgrade",
    [
        b"connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n",
        b"connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
        b"sec-websocket-version: 13\r\n",
    ],
)
def test_upgrade_is_ignored_and_served_as_http11(
    loop: asyncio.AbstractEventLoop, upgrade: bytes
) -> None:
    connection, transport = processor(loop)
    connection.data_received(b"GET /first HTTP/1.1\r\nhost: x\r\n" + upgrade + b"\r\n" + GET)
    settle(loop)
    responses = transport.responses()
    assert [status for status, _, _ in responses] == [200, 200], responses
    assert responses[0][2].startswith(b"/first") and not transport.closed


def test_connect_is_405(loop: asyncio.AbstractEventLoop) -> None:
    connection, transport = processor(loop)
    connection.data_received(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com\r\n\r\n")
    [(status, _, body)] = transport.responses()
    assert status == 405 and "CONNECT" in json.loads(body)["error"] and transport.closed


def test_expect_continue_over_the_limit_is_refused_without_100(
    loop: asyncio.AbstractEventLoop,
) -> None:
    connection, transport = processor(loop)
    connection.data_received(
        b"POST /v2/models/m/infer HTTP/1.1\r\nexpect: 100-continue\r\n"
        b"content-length: 100000000000\r\n\r\n"
    )
    assert b"100 Continue" not in transport.written
    [(status, _, body)] = transport.responses()
    assert status == 400 and "100000000000" in json.loads(body)["error"] and transport.closed
    # within the limit: invited
    connection, transport = processor(loop)
    connection.data_received(
        b"POST /v2/models/m/infer HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
    )
    assert transport.written == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_a_client_that_does_not_read_is_not_read(loop: asyncio.AbstractEventLoop) -> None:
    connection, transport = processor(loop)
    connection.pause_writing()
    assert not transport.reading
    connection.resume_writing()
    assert transport.reading


def test_slow_head_gets_408(loop: asyncio.AbstractEventLoop) -> None:
    limits = HttpLimits(header_timeout=0.2, body_timeout=0.2)
    server = HttpServer(App(), _sock(), limits=limits)
    server.loop = loop
    transport = FakeTransport()
    connection = server.connection_type(server)
    connection.connection_made(transport)

    async def trickle() -> None:
        for byte in b"GET / HTTP/1.1\r\nhost: x":
            if transport.closed:
                return
            connection.data_received(bytes([byte]))
            await asyncio.sleep(0.02)

    loop.run_until_complete(asyncio.wait_for(trickle(), 5))
    assert transport.closed
    [(status, _, body)] = transport.responses()
    assert status == 408 and "head" in json.loads(body)["error"]


def test_connection_caps(loop: asyncio.AbstractEventLoop) -> None:
    limits = HttpLimits(max_connections=3, max_connections_per_client=2)
    server = HttpServer(App(), _sock(), limits=limits)
    server.loop = loop
    opened = []
    for _ in range(3):
        transport = FakeTransport()
        connection = server.connection_type(server)
        connection.connection_made(transport)
        opened.append((connection, transport))
    assert [t.closed for _, t in opened] == [False, False, True]
    assert opened[2][1].responses()[0][0] == 503
    opened[0][0].connection_lost(None)
    transport = FakeTransport()
    server.connection_type(server).connection_made(transport)
    assert not transport.closed


# -- the gateway's listener ------------------------------------------------------------


class Exchange:
    def __init__(self, connection: Any, body: bytes) -> None:
        self.connection = connection
        self.body = body

    def start(self) -> None:
        self.connection.respond(self, 200, b"", b"%d" % len(self.body))

    def abandon(self) -> None:
        pass


class Refusal(Exchange):
    def __init__(self, connection: Any) -> None:
        super().__init__(connection, b"")

    def start(self) -> None:
        self.connection.respond(self, 401, b"", b'{"error":"no"}')


def gateway(loop: asyncio.AbstractEventLoop, refuse: bool) -> Any:
    checked = []

    def head_check(connection: Any, method: bytes, url: bytes, headers: Any) -> Any:
        checked.append(url)
        return Refusal(connection) if refuse else None

    server = GatewayHttpServer(
        lambda conn, method, url, headers, body: Exchange(conn, body),
        _sock(),
        max_body_size=10_000_000,
        too_large_body=lambda size: b'{"error":"too large"}',
        head_check=head_check,
    )
    server.loop = loop
    transport = FakeTransport()
    connection = server.connection_type(server)
    connection.connection_made(transport)
    return connection, transport, checked


@pytest.mark.parametrize("refuse", [True, False])
def test_gateway_checks_a_large_request_before_buffering_its_body(
    loop: asyncio.AbstractEventLoop, refuse: bool
) -> None:
    connection, transport, checked = gateway(loop, refuse)
    size = 5_000_000
    connection.data_received(b"POST /api/predict/s/x HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % size)
    for _ in range(size // 100_000):
        connection.data_received(b"z" * 100_000)
        if refuse:
            assert connection._body_size <= 200_000 and not connection._body
    assert checked == [b"/api/predict/s/x"]
    [(status, _, body)] = transport.responses()
    assert (status, body) == ((401, b'{"error":"no"}') if refuse else (200, b"%d" % size))


def test_gateway_small_request_is_not_checked_on_its_head(
    loop: asyncio.AbstractEventLoop,
) -> None:
    connection, transport, checked = gateway(loop, True)
    connection.data_received(b"POST /api/predict/s/x HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc")
    assert checked == [] and transport.responses()[0][0] == 200


def test_gateway_refusal_waits_for_the_answer_before_it(loop: asyncio.AbstractEventLoop) -> None:
    held = []

    class Held(Exchange):
        def start(self) -> None:
            held.append(self)

    server = GatewayHttpServer(
        lambda conn, method, url, headers, body: Held(conn, body),
        _sock(),
        max_body_size=100,
        too_large_body=lambda size: b'{"error":"too large"}',
    )
    server.loop = loop
    transport = FakeTransport()
    connection = server.connection_type(server)
    connection.connection_made(transport)
    connection.data_received(GET + b"\x01\x02 nonsense\r\n\r\n")
    assert transport.written == b""
    connection.respond(held[0], 200, b"", b"ok")
    assert [status for status, _, _ in transport.responses()] == [200, 400] and transport.closed


def test_a_body_chunk_before_a_new_head_is_not_counted_as_head(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Only bytes of a head in progress count against the head limits, not the body
    that arrived with the start of the next request."""
    connection, transport = processor(loop)
    connection.data_received(b"POST /a HTTP/1.1\r\ncontent-length: 9000\r\n\r\n")
    connection.data_received(b"b" * 9000 + b"GET /b HTTP/1.1\r\n")
    connection.data_received(b"host: x\r\n\r\n")
    settle(loop)
    assert [status for status, _, _ in transport.responses()] == [200, 200]


@pytest.mark.parametrize(
    "request_",
    [
        b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
    ],
    ids=["cl-and-te", "two-lengths", "no-colon"],
)
def test_ambiguous_framing_is_400_and_closes(
    loop: asyncio.AbstractEventLoop, request_: bytes
) -> None:
    connection, transport = processor(loop)
    connection.data_received(request_)
    [(status, headers, body)] = transport.responses()
    assert status == 400 and "malformed HTTP request" in json.loads(body)["error"]
    assert headers["connection"] == "close" and transport.closed


def test_a_client_that_stops_reading_is_dropped_after_the_keep_alive(
    loop: asyncio.AbstractEventLoop,
) -> None:
    server = HttpServer(App(), _sock(), keep_alive_timeout=0.2)
    server.loop = loop
    transport = FakeTransport()
    connection = server.connection_type(server)
    connection.connection_made(transport)
    connection.data_received(GET)
    settle(loop)
    connection.pause_writing()  # its answer is stuck in the transport

    async def wait_closed() -> None:
        while not transport.closed:
            await asyncio.sleep(0.02)

    loop.run_until_complete(asyncio.wait_for(wait_closed(), 5))
    assert transport.aborted


def test_gateway_refusal_on_the_head_survives_pipelining(loop: asyncio.AbstractEventLoop) -> None:
    """A large request refused on its head behind requests still being served (the
    others started while its body arrives): it is answered with its refusal, in order."""
    connection, transport, checked = gateway(loop, True)
    held: list[Any] = []
    server = connection._server
    handler = server.handler

    def holding(conn: Any, method: bytes, url: bytes, headers: Any, body: bytes) -> Any:
        exchange = handler(conn, method, url, headers, body)
        if url == b"/first":
            exchange.start = lambda: held.append(exchange)  # type: ignore[method-assign]
        return exchange

    server.handler = holding
    connection.data_received(b"GET /first HTTP/1.1\r\n\r\nGET /second HTTP/1.1\r\n\r\n")
    connection.data_received(b"POST /big HTTP/1.1\r\ncontent-length: 200000\r\n\r\n")
    connection.data_received(b"z" * 100_000)
    connection.respond(held[0], 200, b"", b"first")  # answered mid-body
    connection.data_received(b"z" * 100_000)
    assert checked == [b"/big"]
    assert [(s, b) for s, _, b in transport.responses()] == [
        (200, b"first"),
        (200, b"0"),
        (401, b'{"error":"no"}'),
    ]
