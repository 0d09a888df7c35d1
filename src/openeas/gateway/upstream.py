"""A lean HTTP/1.1 client to the instances: keep-alive connection pools, one write per request.

Each instance gets an :class:`InstancePool` of connections; a request borrows one (or
opens one), writes the request head and body with a single ``transport.write`` and gets
the complete response, which ``httptools`` parses (chunked bodies decoded).  The answer
goes to a :class:`Receiver` (callbacks: the HTTP front's hot path needs no future or
task per request) or, through :meth:`InstancePool.request`, to an awaiting coroutine.

Inference requests to the same model are pipelined, up to :data:`PIPELINE_DEPTH` on one
connection: the processor runs pipelined inference requests concurrently and answers
them in order.  An answer can thus wait for those before it, to the same model and
queued earlier, which a FIFO model queue mostly finishes first anyway; in exchange both
sides read and write several requests per system call (on two cores, through-the-gateway
throughput 0.77x -> 0.84x of direct).  Every other request (metadata, repository,
sequences, large bodies) has a connection to itself, so it never waits behind another.  Aborting a request that is alone on its connection (keepalive exceeded, client
gone) closes the connection, which is how the instance learns that nobody waits for the
answer; one that shares it is dropped when its answer comes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Protocol

import httptools

from openeas.gateway.deadline import Deadline
from openeas.protocol import instance_token
from openeas.transport.sockets import connect_unix, set_nodelay

log = logging.getLogger(__name__)

#: A pooled connection idle for longer than this is closed instead of reused, well
#: before the processor's own keep-alive timeout (75 s) could close it under a request.
IDLE_TIMEOUT_S = 20.0
#: At most this many inference requests to one model share an upstream connection.
PIPELINE_DEPTH = 16
#: Only requests with bodies up to this size are pipelined: for larger ones the copying
#: outweighs the system calls saved, and a body over the instance's input limit gets
#: its connection closed (with whatever was pipelined on it).
PIPELINE_MAX_BODY = 256 * 1024
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
    """One keep-alive connection to an instance.

    It carries one request at a time, or several pipelined inference requests to the
    same model (:meth:`InstancePool.take`), which the instance runs concurrently and
    answers in order.
    """

    def __init__(self, pool: InstancePool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        #: Who gets each answer, in order; None for a request nobody waits for any more.
        self.receivers: collections.deque[Receiver | None] = collections.deque()
        #: The path of the requests in flight when they may be pipelined, else None.
        self.key: bytes | None = None
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
        self._fail(UpstreamClosed("the instance closed the connection"))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamClosed(f"malformed response: {exc}"))
            self.abort()

    def _fail(self, exc: UpstreamClosed) -> None:
        receivers, self.receivers = self.receivers, collections.deque()
        for receiver in receivers:
            if receiver is not None:
                receiver.upstream_failed(exc)

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
        receiver = self.receivers.popleft() if self.receivers else None
        if not parser.should_keep_alive():
            self._fail(UpstreamClosed("the instance closed the connection"))
            self.abort()
        elif not self.receivers:
            self._pool.done(self)
        if receiver is not None:
            receiver.upstream_response(response)

    # -- used by the pool and its callers ----------------------------------------------

    def send(self, data: bytes, receiver: Receiver) -> None:
        """Write a whole request; ``receiver`` gets its outcome."""
        self.receivers.append(receiver)
        self.transport.write(data)  # type: ignore[union-attr]

    def cancel(self, receiver: Receiver) -> None:
        """Nobody waits for ``receiver``'s answer any more.

        When nobody waits for the other requests on the connection either, the
        connection is aborted, which is how the instance learns it; otherwise the
        request's answer is dropped when it comes.
        """
        receivers = self.receivers
        if all(waiting is None or waiting is receiver for waiting in receivers):
            self.abort()
            return
        for i, waiting in enumerate(receivers):
            if waiting is receiver:
                receivers[i] = None

    def abort(self) -> None:
        """Drop the connection and every request on it, unannounced."""
        self.receivers.clear()
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
        pipeline_depth: int = PIPELINE_DEPTH,
        token: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.loop = loop
        self.unix_socket = unix_socket
        self.pipeline_depth = pipeline_depth
        #: The ``host`` header line of requests to this instance (with the instance's
        #: internal token when it has one: no per-request cost), and the blank line.
        self.host_line = b"host: %s:%d\r\n" % (host.encode(), port)
        if token:
            self.host_line += instance_token.HEADER + b": " + token.encode() + b"\r\n"
        self.host_line += b"\r\n"
        self._idle: list[UpstreamConnection] = []
        self._busy: set[UpstreamConnection] = set()

    def take(self, key: bytes | None) -> UpstreamConnection | None:
        """A connection for a request, or None when a new one must be opened.

        ``key`` is the path of a request that may be pipelined (an inference request),
        None for one that needs a connection to itself.  A pipelined request goes behind
        the fewest requests to the same path, up to ``pipeline_depth``, before it takes
        an idle connection: fewer, fuller writes and reads on both sides.
        """
        if key is not None and self.pipeline_depth > 1:
            best: UpstreamConnection | None = None
            fewest = self.pipeline_depth
            for conn in self._busy:
                if conn.key == key and len(conn.receivers) < fewest and not conn.closed:
                    best, fewest = conn, len(conn.receivers)
            if best is not None:
                return best
        conn = self.take_idle()
        if conn is not None:
            conn.key = key
        return conn

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
            conn.key = None
            self._busy.add(conn)
            return conn
        return None

    def done(self, conn: UpstreamConnection) -> None:
        """A connection answered all its requests and may serve the next ones."""
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
        receiver = _FutureReceiver(future)
        try:
            conn.send(data, receiver)
            return await deadline.wait(future)
        except BaseException:
            conn.cancel(receiver)
            raise

    async def _connect(self, deadline: Deadline) -> UpstreamConnection:
        if self.unix_socket is not None:
            try:
                _, conn = await deadline.wait(
                    asyncio.ensure_future(
                        asyncio.wait_for(
                            connect_unix(
                                self.loop, lambda: UpstreamConnection(self), self.unix_socket
                            ),
                            CONNECT_TIMEOUT_S,
                        )
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

    def idle(self) -> bool:
        """No request in progress."""
        return not self._busy

    def connections(self) -> int:
        """How many connections to the instance are open (idle or busy)."""
        return sum(not conn.closed for conn in (*self._idle, *self._busy))

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
