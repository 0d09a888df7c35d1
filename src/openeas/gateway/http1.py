"""The gateway's HTTP/1.1 listener: client connections, framing, keep-alive, graceful stop.

A dedicated server rather than the processor's ASGI one: a request that goes to an idle
instance connection is handled entirely in callbacks (parse, forward, relay), with no
ASGI messages, coroutine or task per request, which is most of a gateway's Python cost.
What happens to a request is the :class:`Handler`'s business; this module only frames
it.  Supported: keep-alive, pipelining (answered in order, one at a time), chunked
request bodies, ``Expect: 100-continue``, a body size limit, an idle timeout and a
graceful stop.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import socket
import time
from collections.abc import Callable
from typing import Protocol

import httptools

log = logging.getLogger(__name__)

_REASONS = {
    200: b"OK", 204: b"No Content", 400: b"Bad Request", 401: b"Unauthorized",
    403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Payload Too Large", 429: b"Too Many Requests",
    450: b"Queue Full", 500: b"Internal Server Error", 501: b"Not Implemented",
    502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}  # fmt: skip
_STATUS_LINES: dict[int, bytes] = {}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"connection: close\r\n"


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n`` (cached)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))
    return line


class _Clock:
    """The ``date`` header line, formatted once a second."""

    __slots__ = ("_second", "_line")

    def __init__(self) -> None:
        self._second = 0
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._line


_CLOCK = _Clock()


class Exchange(Protocol):
    """One request being handled (what a :class:`Handler` returns)."""

    def start(self) -> None:
        """Handle the request; the answer comes through :meth:`ClientConnection.respond`."""

    def abandon(self) -> None:
        """The client went away before the answer: stop and release what it holds."""


class Handler(Protocol):
    """Turns a complete request into an :class:`Exchange`."""

    def __call__(
        self,
        connection: ClientConnection,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> Exchange: ...


class _Pending:
    __slots__ = ("method", "url", "headers", "body", "keep_alive")

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive


class ClientConnection(asyncio.Protocol):
    """One client connection: requests are parsed, handled one at a time, answered in order."""

    def __init__(self, server: GatewayHttpServer) -> None:
        self._server = server
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False
        self._pending: collections.deque[_Pending] = collections.deque()
        #: The request being handled, its keep-alive, and whether _advance() is running.
        self._active: Exchange | None = None
        self._keep_alive = True
        self._advancing = False
        self._paused = False
        self._closing = False
        self._idle_handle: asyncio.TimerHandle | None = None
        self._last_active = 0.0

    # -- connection lifecycle ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._server.connections.add(self)
        self._last_active = self._loop.time()
        if self._server.keep_alive_timeout > 0:
            self._idle_handle = self._loop.call_later(
                self._server.keep_alive_timeout, self._check_idle
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._closing = True
        self._pending.clear()
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        active, self._active = self._active, None
        if active is not None:
            self._server.request_finished()
            active.abandon()

    def data_received(self, data: bytes) -> None:
        self._last_active = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, b"protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}".encode())

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self._headers.append((name, value))
        if name == b"expect" and value.lower() == b"100-continue":
            self._write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._body_size += len(body)
        if self._body_size > self._server.max_body_size:
            self._too_large = True
            self._body = []
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._too_large:
            self._reject(413, self._server.too_large_body(self._body_size))
            return
        parser = self._parser
        parts = self._body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        if self._active is None and not self._pending and not self._closing:
            self._keep_alive = parser.should_keep_alive()
            self._run(parser.get_method(), self._url, self._headers, body)
            if self._pending:  # it answered at once, and more requests came meanwhile
                self._advance()
            return
        self._pending.append(
            _Pending(
                parser.get_method(), self._url, self._headers, body, parser.should_keep_alive()
            )
        )
        if len(self._pending) > self._server.max_pipelined and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        if self._active is None:
            self._advance()

    # -- serving -----------------------------------------------------------------------

    def _advance(self) -> None:
        """Start pending requests in order while the previous ones answer at once."""
        if self._advancing:
            return  # the loop below picks up the next request
        self._advancing = True
        try:
            pending = self._pending
            while pending and self._active is None and not self._closing:
                request = pending.popleft()
                self._keep_alive = request.keep_alive
                self._run(request.method, request.url, request.headers, request.body)
            if self._paused and len(pending) <= self._server.max_pipelined and not self._closing:
                self._paused = False
                if self._transport is not None:
                    self._transport.resume_reading()
        finally:
            self._advancing = False

    def _run(
        self, method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """Hand one request (the next to answer) to the handler."""
        exchange = self._server.handler(self, method, url, headers, body)
        self._active = exchange
        self._server.request_started()
        try:
            exchange.start()
        except Exception:
            log.exception("gateway request handler failed")
            if self._active is exchange:
                self.respond(exchange, 500, b"", b'{"error":"internal server error"}')

    def respond(self, exchange: Exchange, status: int, header_block: bytes, body: bytes) -> None:
        """Answer ``exchange`` (the active request): status, header lines and body, in
        one write; then go on with the next request (or close)."""
        if exchange is not self._active:
            return
        self._active = None
        self._server.request_finished()
        self._last_active = self._loop.time()
        keep_alive = self._keep_alive and not self._server.draining
        self._write(
            status_line(status)
            + _CLOCK.line()
            + header_block
            + b"content-length: %d\r\n" % len(body)
            + (b"\r\n" if keep_alive else _CLOSE + b"\r\n")
            + body
        )
        if not keep_alive:
            self._close()
        elif self._pending:
            self._advance()

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _reject(self, status: int, body: bytes) -> None:
        """Answer a request that cannot be handled, then close (the stream is lost)."""
        self._write(
            status_line(status)
            + b"content-type: application/json\r\nconnection: close\r\n"
            + b"content-length: %d\r\n\r\n" % len(body)
            + body
        )
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def shutdown(self) -> None:
        """Close now when idle; otherwise after the answer in progress."""
        if self._active is None:
            self._close()

    def _check_idle(self) -> None:
        timeout = self._server.keep_alive_timeout
        idle_for = self._loop.time() - self._last_active
        busy = self._active is not None
        if not busy and idle_for >= timeout:
            self._close()
            return
        delay = timeout if busy else max(timeout - idle_for, 0.05)
        self._idle_handle = self._loop.call_later(delay, self._check_idle)


class GatewayHttpServer:
    """Serves a :class:`Handler` on one listening socket."""

    def __init__(
        self,
        handler: Handler,
        sock: socket.socket,
        *,
        max_body_size: int,
        too_large_body: Callable[[int], bytes],
        keep_alive_timeout: float = 75.0,
        max_pipelined: int = 32,
    ) -> None:
        self.handler = handler
        self.sock = sock
        self.max_body_size = max_body_size
        self.too_large_body = too_large_body
        self.keep_alive_timeout = keep_alive_timeout
        self.max_pipelined = max_pipelined
        self.connections: set[ClientConnection] = set()
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.loop = asyncio.get_event_loop()
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def request_started(self) -> None:
        self.in_flight += 1
        if self.in_flight == 1:
            self._idle.clear()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: ClientConnection(self), sock=self.sock, backlog=2048
        )

    async def stop(self, timeout: float) -> None:
        """Stop accepting, finish in-flight requests (up to ``timeout``), close the rest."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.shutdown()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("%d request(s) still in flight after %ss; closing", self.in_flight, timeout)
        for connection in list(self.connections):
            connection._close()
