"""A lean HTTP/1.1 client to the instances: keep-alive connection pools, one write per request.

Each instance gets an :class:`InstancePool` of idle connections; a request borrows one
(or opens one), writes the request head and body with a single ``transport.write`` and
gets the complete response, which ``httptools`` parses (chunked bodies decoded).  The
answer goes to a :class:`Receiver` (callbacks: the HTTP front's hot path needs no future
or task per request) or, through :meth:`InstancePool.request`, to an awaiting coroutine.
A connection is used by one request at a time (no pipelining), so a slow request never
holds up another, and aborting a request (keepalive exceeded, client gone) closes its
connection, which is how the instance learns that nobody waits for the answer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Protocol

import httptools

from openeas.gateway.deadline import Deadline
from openeas.server.frontends.http1 import set_nodelay
from openeas.server.frontends.unix import socket_address

log = logging.getLogger(__name__)

#: A pooled connection idle for longer than this is closed instead of reused, well
#: before the processor's own keep-alive timeout (75 s) could close it under a request.
IDLE_TIMEOUT_S = 20.0
#: Opening a connection that takes longer than this counts as a connect failure.
CONNECT_TIMEOUT_S = 3.0
#: Response headers that describe the hop (RFC 9110 7.6.1) or the framing (rewritten by
#: whoever relays the body); they are left out of :attr:`UpstreamResponse.header_block`.
HOP_HEADERS = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"content-length", b"date",
    }
)  # fmt: skip


class ConnectFailed(ConnectionError):
    """The instance could not be reached; nothing was sent (safe to retry elsewhere)."""


class UpstreamClosed(ConnectionError):
    """The instance closed the connection after the request was sent, without answering."""


class UpstreamResponse:
    """A complete response from an instance."""

    __slots__ = ("status", "header_block", "body")

    def __init__(self, status: int, header_block: bytes, body: bytes) -> None:
        self.status = status
        #: The end-to-end headers as ``name: value\r\n`` lines (names lower-cased, in
        #: order, :data:`HOP_HEADERS` left out), ready to be relayed.
        self.header_block = header_block
        self.body = body


class Receiver(Protocol):
    """Where a connection delivers the outcome of the request sent on it."""

    def upstream_response(self, response: UpstreamResponse) -> None: ...

    def upstream_failed(self, exc: UpstreamClosed) -> None: ...


class _FutureReceiver:
    """Delivers the outcome to a future (:meth:`InstancePool.request`)."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[UpstreamResponse]) -> None:
        self.future = future

    def upstream_response(self, response: UpstreamResponse) -> None:
        if not self.future.done():
            self.future.set_result(response)

    def upstream_failed(self, exc: UpstreamClosed) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an instance, serving one request at a time."""

    def __init__(self, pool: InstancePool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._receiver: Receiver | None = None
        self._lines: list[bytes] = []
        self._body: list[bytes] = []
        self.closed = False
        self.last_used = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_nodelay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool.forget(self)
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.upstream_failed(UpstreamClosed("the instance closed the connection"))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            receiver, self._receiver = self._receiver, None
            self.abort()
            if receiver is not None:
                receiver.upstream_failed(UpstreamClosed(f"malformed response: {exc}"))

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._lines = []
        self._body = []

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in HOP_HEADERS:
            self._lines.append(name + b": " + value + b"\r\n")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        parts = self._body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        parser = self._parser
        response = UpstreamResponse(parser.get_status_code(), b"".join(self._lines), body)
        receiver, self._receiver = self._receiver, None
        if parser.should_keep_alive():
            self._pool.done(self)
        else:
            self.abort()
        if receiver is not None:
            receiver.upstream_response(response)

    # -- used by the pool and its callers ----------------------------------------------

    def send(self, data: bytes, receiver: Receiver) -> None:
        """Write a whole request; ``receiver`` gets its outcome."""
        self._receiver = receiver
        self.transport.write(data)  # type: ignore[union-attr]

    def abort(self) -> None:
        """Drop the connection (and with it any request in progress, unannounced)."""
        self._receiver = None
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
        if self.transport is not None:
            self.transport.abort()


class InstancePool:
    """Keep-alive connections to one instance (``unix_socket``, else ``host:port``)."""

    def __init__(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop,
        unix_socket: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.loop = loop
        self.unix_socket = unix_socket
        #: The ``host`` header line of requests to this instance, and the blank line.
        self.host_line = b"host: %s:%d\r\n\r\n" % (host.encode(), port)
        self._idle: list[UpstreamConnection] = []
        self._busy: set[UpstreamConnection] = set()

    def take_idle(self) -> UpstreamConnection | None:
        """An open idle connection, now busy (give it back with :meth:`done`), or None."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if time.monotonic() - conn.last_used > IDLE_TIMEOUT_S:
                conn.abort()
                continue
            self._busy.add(conn)
            return conn
        return None

    def done(self, conn: UpstreamConnection) -> None:
        """A connection finished its request and may serve the next one."""
        self._busy.discard(conn)
        if not conn.closed:
            conn.last_used = time.monotonic()
            self._idle.append(conn)

    async def request(self, data: bytes, deadline: Deadline) -> UpstreamResponse:
        """Send one serialised request and return the response.

        ConnectFailed when no connection could be opened (nothing was sent),
        UpstreamClosed when the connection broke before a response came, Expired when
        ``deadline`` passed first.  An expired or cancelled request aborts its connection.
        """
        conn = self.take_idle()
        if conn is None:
            conn = await self._connect(deadline)
            self._busy.add(conn)
        future: asyncio.Future[UpstreamResponse] = self.loop.create_future()
        try:
            conn.send(data, _FutureReceiver(future))
            return await deadline.wait(future)
        except BaseException:
            conn.abort()
            raise

    async def _connect(self, deadline: Deadline) -> UpstreamConnection:
        if self.unix_socket is not None:
            try:
                _, conn = await deadline.wait(
                    asyncio.ensure_future(
                        asyncio.wait_for(self._connect_unix(self.unix_socket), CONNECT_TIMEOUT_S)
                    )
                )
                return conn
            except OSError as exc:
                # e.g. an instance started without the socket: TCP from now on
                log.info(
                    "instance socket %s unavailable (%s); using %s:%d",
                    self.unix_socket, exc, self.host, self.port,
                )  # fmt: skip
                self.unix_socket = None
        connect = self.loop.create_connection(
            lambda: UpstreamConnection(self), self.host, self.port
        )
        try:
            _, conn = await deadline.wait(
                asyncio.ensure_future(asyncio.wait_for(connect, CONNECT_TIMEOUT_S))
            )
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

    async def _connect_unix(self, name: str) -> tuple[asyncio.BaseTransport, UpstreamConnection]:
        # connected by hand: uvloop's create_unix_connection rejects abstract addresses
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await self.loop.sock_connect(sock, socket_address(name))
            return await self.loop.create_unix_connection(
                lambda: UpstreamConnection(self), sock=sock
            )
        except BaseException:
            sock.close()
            raise

    def idle(self) -> bool:
        """No request in progress."""
        return not self._busy

    def forget(self, conn: UpstreamConnection) -> None:
        """Drop a closed connection (idle or busy)."""
        self._busy.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def close(self) -> None:
        """Close every connection (requests in progress fail with UpstreamClosed)."""
        for conn in [*self._idle, *self._busy]:
            if conn.transport is not None:
                conn.transport.abort()
        self._idle.clear()
