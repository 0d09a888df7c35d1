"""A lean HTTP/1.1 client to the instances: keep-alive connection pools, one write per request.

Each instance gets an :class:`InstancePool` of idle connections; a request borrows one
(or opens one), writes the request head and body with a single ``transport.write`` and
waits for the complete response, which ``httptools`` parses (chunked bodies decoded).
A connection is used by one request at a time (no pipelining), so a slow request never
holds up another, and aborting a request (keepalive exceeded, client gone) closes its
connection, which is how the instance learns that nobody waits for the answer.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httptools

from openeas.gateway.deadline import Deadline

#: A pooled connection idle for longer than this is closed instead of reused, well
#: before the processor's own keep-alive timeout (75 s) could close it under a request.
IDLE_TIMEOUT_S = 20.0
#: Opening a connection that takes longer than this counts as a connect failure.
CONNECT_TIMEOUT_S = 3.0


class ConnectFailed(ConnectionError):
    """The instance could not be reached; nothing was sent (safe to retry elsewhere)."""


class UpstreamClosed(ConnectionError):
    """The instance closed the connection after the request was sent, without answering."""


class UpstreamResponse:
    """A complete response from an instance."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        #: Header names lower-cased, in order, as received.
        self.headers = headers
        self.body = body


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an instance, serving one request at a time."""

    def __init__(self, pool: InstancePool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.closed = False
        self.last_used = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamClosed("the instance closed the connection"))
        self._waiter = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(UpstreamClosed(f"malformed response: {exc}"))
            self.abort()

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        self._waiter = None
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        response = UpstreamResponse(self._parser.get_status_code(), self._headers, body)
        if not self._parser.should_keep_alive():
            self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    # -- used by the pool --------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[UpstreamResponse]:
        """Write a whole request; the future gets its response."""
        waiter: asyncio.Future[UpstreamResponse] = self._pool.loop.create_future()
        self._waiter = waiter
        self.transport.write(data)  # type: ignore[union-attr]
        return waiter

    def abort(self) -> None:
        """Drop the connection (and with it any request in progress)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class InstancePool:
    """Keep-alive connections to one instance (``host:port``)."""

    def __init__(self, host: str, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.host = host
        self.port = port
        self.loop = loop
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()

    async def request(self, data: bytes, deadline: Deadline) -> UpstreamResponse:
        """Send one serialised request and return the response.

        ConnectFailed when no connection could be opened (nothing was sent),
        UpstreamClosed when the connection broke before a response came, Expired when
        ``deadline`` passed first.  An expired or cancelled request aborts its connection.
        """
        conn = self._take_idle()
        if conn is None:
            conn = await self._connect(deadline)
        self._busy.add(conn)
        try:
            response = await deadline.wait(conn.send(data))
        except BaseException:
            conn.abort()
            raise
        finally:
            self._busy.discard(conn)
        if not conn.closed:
            conn.last_used = time.monotonic()
            self._idle.append(conn)
        return response

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if time.monotonic() - conn.last_used > IDLE_TIMEOUT_S:
                conn.abort()
                continue
            return conn
        return None

    async def _connect(self, deadline: Deadline) -> _Connection:
        connect = self.loop.create_connection(lambda: _Connection(self), self.host, self.port)
        try:
            _, conn = await deadline.wait(
                asyncio.ensure_future(asyncio.wait_for(connect, CONNECT_TIMEOUT_S))
            )
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

    def idle(self) -> bool:
        """No request in progress."""
        return not self._busy

    def forget(self, conn: _Connection) -> None:
        """Drop a closed connection from the idle list."""
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def close(self) -> None:
        """Close every connection (requests in progress fail with UpstreamClosed)."""
        for conn in [*self._idle, *self._busy]:
            conn.abort()
        self._idle.clear()
