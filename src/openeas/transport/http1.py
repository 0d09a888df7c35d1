"""HTTP/1.1 framing shared by the processor's server and the gateway's listener.

Both answer each request with one ``transport.write``, so neither can sit on a general
server; what they share lives here, once: the status lines and the ``date`` header (both
cached), and the connection and server skeletons on httptools and
the running event loop:

* :class:`Http1Connection` parses a client's requests (chunked bodies, ``Expect:
  100-continue``, the body size limit), rejects malformed ones, and closes the connection
  when it stays idle past the keep-alive timeout or when the server stops;
* :class:`Http1Server` accepts connections (up to :class:`HttpLimits`' caps), counts the
  requests in flight and stops gracefully (stop accepting, finish what is in flight up to
  a timeout, close the rest).

Hostile clients are bounded here, once for both: :class:`HttpLimits` caps the request
target (414), the header block and the header count (431, checked while the head
arrives, so a huge header is never buffered whole), the time a request head and body may
take to arrive (408: slowloris), the connections per server and per client address; a
client that does not read its answers stops being read (``pause_writing``), and a
request refused mid-pipeline is answered after the answers before it.

What differs is a subclass's business, in plain methods rather than per-request hooks:
its ``_complete`` takes a finished request (``_url``, ``_headers``, ``_body``
and the parser's method and keep-alive) and serves it, answering in order when requests
are pipelined; ``_busy`` says whether a request is being served.  The processor's
:class:`~openeas.server.frontends.httpserver.HttpServer` serves an app's direct route or
its ASGI interface; the gateway's :class:`~openeas.gateway.http1.GatewayHttpServer`
hands each request to a :class:`~openeas.gateway.http1.Handler`, in callbacks only.
"""

from __future__ import annotations

import abc
import asyncio
import email.utils
import logging
import os
import resource
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import httptools

from openeas.transport.sockets import set_nodelay

log = logging.getLogger(__name__)

_REASONS = {
    100: b"Continue", 200: b"OK", 204: b"No Content", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Payload Too Large",
    414: b"URI Too Long", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    450: b"Queue Full", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout",
}  # fmt: skip
_STATUS_LINES: dict[int, bytes] = {}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n`` (cached)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))
    return line


class Clock:
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


#: The clock every response's ``date`` line comes from.
CLOCK = Clock()


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one client may make an HTTP/1.1 server hold (the defaults are those of
    common production servers; each has a command-line flag, see docs/architecture.md).
    """

    #: Longest request target (URL) in bytes; longer: 414.
    max_url_size: int = 16 * 1024
    #: Largest header block (names, values and line overhead) in bytes; larger: 431.
    max_header_size: int = 64 * 1024
    #: Most header fields in one request; more: 431.
    max_header_count: int = 100
    #: Seconds a request head may take to arrive, from its first byte; then 408 and close.
    header_timeout: float = 30.0
    #: Seconds a request body may take to arrive, after its head; then 408 and close.
    body_timeout: float = 300.0
    #: Most open connections per server (0: half the open-file limit); more are refused.
    max_connections: int = 0
    #: Most open connections per client address (0: no cap); more are refused.
    max_connections_per_client: int = 0

    def connection_cap(self) -> int:
        """:attr:`max_connections`, or half the process's open-file limit when it is 0."""
        if self.max_connections > 0:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            soft = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536
        return max(64, soft // 2)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing after the request was refused."""


def json_error(message: bytes) -> bytes:
    """``{"error":"<message>"}``."""
    text = message.decode("utf-8", "replace").replace("\\", "\\\\").replace('"', '\\"')
    return b'{"error":"' + text.replace("\n", " ").encode() + b'"}'


def split_url(url: bytes) -> tuple[bytes, bytes]:
    """A request target's raw path and query (the common origin form without parsing)."""
    if b"?" in url or b"#" in url or not url.startswith(b"/"):
        parsed = httptools.parse_url(url)
        return parsed.path, parsed.query or b""
    return url, b""


class Http1Connection(asyncio.Protocol, abc.ABC):
    """One client connection: parsing, limits, rejection, timeouts, flow control, closing.

    A subclass adds ``_complete`` (serve the request just parsed, whose ``_url``,
    ``_headers`` and ``_body`` are set) and ``_busy``; when it has answered everything it
    was given it calls :meth:`_all_answered`.  One that extends ``connection_made`` or
    ``connection_lost`` calls these.
    """

    def __init__(self, server: Http1Server) -> None:
        self._server = server
        self._loop = server.loop
        self._limits = server.limits
        self._parser = self._new_parser()
        self._transport: asyncio.Transport | None = None
        self._client: str | None = None
        # parsing state of the current message
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_size = 0  # names and values parsed
        self._head_bytes = 0  # bytes received while a head was in progress
        self._body: list[bytes] = []
        self._body_size = 0
        #: The body size at which _body_passes() is called next (see on_body).
        self._body_check = server.early_body_check
        self._too_large = False
        #: Set by a subclass when the request is refused on its head: its body is dropped.
        self._discard_body = False
        self._expect_continue = False
        #: Loop time the message (head, then body) began, or 0.0 between messages.
        self._receiving_since = 0.0
        self._in_head = False
        self._heads = 0  # heads completed: a chunk that completes none is all head
        self._closing = False
        #: A refused request's answer, held until the requests before it are answered.
        self._final: bytes | None = None
        self._stopped = False  # nothing more is parsed (refused or closing)
        self._timer: asyncio.TimerHandle | None = None
        self._last_active = 0.0
        self._later: list[bytes] | None = None  # see write_soon()
        # why reading is paused: too many pipelined requests, or the client does not read
        self._pipeline_full = False
        self._write_paused = False
        self._read_paused = False

    def _new_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        # pipelined data after a "Connection: close" request is not an error (RFC 9112
        # 9.6): the requests up to it are answered, the rest never read
        parser.set_dangerous_leniencies(lenient_data_after_close=True)
        return parser

    @abc.abstractmethod
    def _busy(self) -> bool:
        """Whether a request is being served or waits to be (the connection is not idle)."""

    @abc.abstractmethod
    def _complete(self) -> None:
        """Serve the request just parsed (``_url``, ``_headers``, ``_body``, the parser)."""

    def _body_passes(self) -> None:
        """The body of the request being received passed the server's
        ``early_body_check`` bytes (a subclass may refuse it on its head here)."""

    # -- connection lifecycle ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is duck-typed
        if not self._server.admit(self, transport):
            self._stopped = self._closing = True
            self._transport = None
            return
        set_nodelay(transport)
        # the timer of the keep-alive and the head/body deadlines: one per connection,
        # re-armed lazily by _check_timers
        self._last_active = self._loop.time()
        self._timer = self._loop.call_later(self._server.timer_period, self._check_timers)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.forget(self)
        self._stopped = self._closing = True
        self._later = None
        self._final = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        self._last_active = self._loop.time()
        if self._stopped:
            return
        heads = self._heads
        in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            if not self._stopped:
                self._refuse(400, f"malformed HTTP request: {exc}".encode())
            return
        if in_head and self._in_head and self._heads == heads:
            # all of it went to one head still in progress: bound what the parser
            # buffers of it (on_url and on_header see a field only once it is whole)
            self._head_bytes += len(data)
            if self._head_bytes > self._server.max_head_bytes:
                self._refuse(431, b"request head larger than the limits allow")

    def _upgraded(self, rest: bytes) -> None:
        """A request asked for a protocol upgrade (``Upgrade: h2c``, ``websocket``): it
        was served as HTTP/1.1, which RFC 9110 7.8 allows; go on parsing HTTP/1.1."""
        self._parser = self._new_parser()
        if rest:
            self.data_received(rest)

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._stopped:  # refused meanwhile: parse no further request
            raise _Refused
        self._url = b""
        self._headers = []
        self._header_size = self._head_bytes = 0
        self._body = []
        self._body_size = 0
        self._body_check = self._server.early_body_check
        self._too_large = self._discard_body = self._expect_continue = False
        self._receiving_since = self._last_active
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.max_url_size:
            self._refuse(414, b"request target longer than %d bytes" % self._limits.max_url_size)
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        headers = self._headers
        headers.append((name, value))
        self._header_size += len(name) + len(value)
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        if len(headers) > self._limits.max_header_count:
            self._refuse(431, b"more than %d header fields" % self._limits.max_header_count)
            raise _Refused

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads += 1
        self._receiving_since = self._last_active  # the body's deadline starts now
        if self._header_size > self._limits.max_header_size:
            self._refuse(431, b"header fields larger than %d bytes" % self._limits.max_header_size)
            raise _Refused
        if self._parser.get_method() == b"CONNECT":
            self._refuse(405, b"method CONNECT is not allowed: this is not a proxy")
            raise _Refused
        if self._expect_continue:
            self._continue()

    def _continue(self) -> None:
        """``Expect: 100-continue``: refuse a body over the limit now, else invite it."""
        for name, value in self._headers:
            if name == b"content-length" and value.isdigit():
                size = int(value)
                server = self._server
                if size > server.max_body_size:
                    self._too_large = True
                    self._reject(server.too_large_status, server.too_large_json(size))
                    raise _Refused
        self.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._too_large or self._discard_body:
            return
        self._body_size += len(body)
        if self._body_size > self._body_check:  # one comparison on the usual path
            if self._body_check < self._server.max_body_size:
                self._body_check = self._server.max_body_size
                self._body_passes()
                if self._discard_body:
                    self._body = []
                    return
            if self._body_size > self._server.max_body_size:
                self._too_large = True
                self._body = []
                return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._receiving_since = 0.0
        self._complete()

    # -- writing and flow control ------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write now (after anything :meth:`write_soon` still holds)."""
        if self._later is not None:
            self.flush()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def write_soon(self, data: bytes) -> None:
        """Write at the end of this loop iteration.

        With many connections ready at once, the loop first serves every request it
        has, then sends the answers: sending each at once wakes its client, which on a
        busy machine takes the CPU from the loop while later requests of the same batch
        wait (measured: p99 at concurrency 16 about 10% lower, throughput the same).
        """
        if self._later is None:
            self._later = [data]
            self._server.flush_soon(self)
        else:
            self._later.append(data)

    def flush(self) -> None:
        """Write what :meth:`write_soon` holds."""
        later, self._later = self._later, None
        transport = self._transport
        if later and transport is not None and not transport.is_closing():
            transport.write(later[0] if len(later) == 1 else b"".join(later))

    def pause_writing(self) -> None:
        # the client does not read its answers: stop reading its requests (what is
        # already parsed, at most max_pipelined requests, is still answered)
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def _set_pipeline_full(self, full: bool) -> None:
        """Too many requests parsed and not answered: stop reading until fewer are."""
        if full != self._pipeline_full:
            self._pipeline_full = full
            self._update_reading()

    def _update_reading(self) -> None:
        pause = self._pipeline_full or self._write_paused or self._stopped
        transport = self._transport
        if pause == self._read_paused or transport is None or transport.is_closing():
            return
        self._read_paused = pause
        if pause:
            transport.pause_reading()
        else:
            transport.resume_reading()
            if self._receiving_since:  # the deadlines do not count the time we did not read
                self._receiving_since = self._loop.time()

    # -- refusing and closing ----------------------------------------------------------

    def _refuse(self, status: int, message: bytes) -> None:
        """Refuse the request being parsed with ``{"error": message}``, then close."""
        self._reject(status, json_error(message))

    def _reject(self, status: int, body: bytes) -> None:
        """Answer a request that cannot be served with a JSON ``body``, then close (the
        stream is lost).  Requests before it are answered first: the answer waits
        until they are (:meth:`_all_answered`), and nothing more is read meanwhile."""
        self._stopped = True
        answer = (
            status_line(status)
            + CLOCK.line()
            + b"content-type: application/json\r\nconnection: close\r\n"
            + b"content-length: %d\r\n\r\n" % len(body)
            + body
        )
        if self._busy():
            self._final = answer
            self._update_reading()  # stopped: read nothing more
            return
        self.write(answer)
        self._close()

    def _all_answered(self) -> None:
        """Called by a subclass when no request waits: a held refusal goes out now."""
        final, self._final = self._final, None
        if final is not None:
            self.write(final)
            self._close()

    def _close(self) -> None:
        self._stopped = self._closing = True
        if self._later is not None:
            self.flush()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def shutdown(self) -> None:
        """Close now when idle; otherwise after the answer in progress."""
        if not self._busy():
            self._close()

    def _check_timers(self) -> None:
        """The keep-alive timeout, and the deadlines of a request head and body."""
        now = self._loop.time()
        period = self._server.timer_period
        since = self._receiving_since
        if since and not self._read_paused:  # a request is arriving
            limit = self._limits.header_timeout if self._in_head else self._limits.body_timeout
            if now - since >= limit:
                what = b"head" if self._in_head else b"body"
                self._refuse(408, b"the request %s took longer than %gs to arrive" % (what, limit))
                if self._closing:
                    return
                delay = period
            else:
                delay = min(since + limit - now, period)
        elif self._busy():
            delay = period
        else:  # idle, or not read from because it does not read its answers
            timeout = self._server.keep_alive_timeout
            idle_for = now - self._last_active
            if timeout > 0 and idle_for >= timeout:
                self._close()
                if self._write_paused and self._transport is not None:
                    self._transport.abort()  # its answers would never drain
                return
            delay = min(timeout - idle_for, period) if timeout > 0 else period
        self._timer = self._loop.call_later(max(delay, 0.05), self._check_timers)


class Http1Server:
    """Serves connections of ``connection_type`` on one listening socket.

    ``too_large_body(size)`` is the answer (status ``too_large_status``) to a request
    whose body passes ``max_body_size``; what it returns is the subclass's convention.
    A connection's ``_body_passes`` is called once a body passes ``early_body_check``
    bytes (by default never: the same as ``max_body_size``).
    """

    connection_type: type[Http1Connection]

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_body_size: int,
        too_large_body: Callable[[int], bytes],
        too_large_status: int,
        keep_alive_timeout: float,
        max_pipelined: int,
        limits: HttpLimits | None = None,
        early_body_check: int | None = None,
    ) -> None:
        self.sock = sock
        self.limits = limits = limits or HttpLimits()
        #: Bytes of a head in progress after which it is refused, the request line included.
        self.max_head_bytes = limits.max_header_size + limits.max_url_size + 1024
        #: How often a connection's timer looks at it (at most): the smallest timeout.
        self.timer_period = min(
            t
            for t in (keep_alive_timeout, limits.header_timeout, limits.body_timeout, 3600.0)
            if t > 0
        )
        self.max_connections = limits.connection_cap()
        self.early_body_check = min(max_body_size, early_body_check or max_body_size)
        self._per_client: dict[str, int] = {}
        self.max_body_size = max_body_size
        self.too_large_body = too_large_body
        self.too_large_status = too_large_status
        self.keep_alive_timeout = keep_alive_timeout
        self.max_pipelined = max_pipelined
        self.connections: set[Http1Connection] = set()
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.loop = asyncio.get_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._to_flush: list[Http1Connection] = []

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def too_large_json(self, size: int) -> bytes:
        """The JSON body of the answer to a body of ``size`` bytes over the limit."""
        return self.too_large_body(size)

    def admit(self, connection: Http1Connection, transport: asyncio.BaseTransport) -> bool:
        """Count a new connection in, or refuse it (503, closed) when a cap is reached."""
        cap = self.limits.max_connections_per_client
        client = None
        if cap > 0:
            peer = transport.get_extra_info("peername")
            client = peer[0] if isinstance(peer, tuple) else None
        if len(self.connections) >= self.max_connections:
            why = b"the server has too many open connections"
        elif client is not None and self._per_client.get(client, 0) >= cap:
            why = b"too many open connections from this client address"
        else:
            self.connections.add(connection)
            if client is not None:
                self._per_client[client] = self._per_client.get(client, 0) + 1
                connection._client = client
            return True
        body = json_error(why)
        transport.write(  # type: ignore[attr-defined]
            status_line(503)
            + b"content-type: application/json\r\nconnection: close\r\n"
            + b"content-length: %d\r\n\r\n" % len(body)
            + body
        )
        transport.close()
        return False

    def forget(self, connection: Http1Connection) -> None:
        """A connection closed: it no longer counts against the caps."""
        if connection in self.connections:
            self.connections.discard(connection)
            client = connection._client
            if client is not None:
                left = self._per_client[client] - 1
                if left:
                    self._per_client[client] = left
                else:
                    del self._per_client[client]

    def flush_soon(self, connection: Http1Connection) -> None:
        """Flush ``connection`` at the end of this loop iteration (one callback for all)."""
        if not self._to_flush:
            self.loop.call_soon(self._flush)
        self._to_flush.append(connection)

    def _flush(self) -> None:
        connections, self._to_flush = self._to_flush, []
        for connection in connections:
            connection.flush()

    def request_started(self) -> None:
        self.in_flight += 1
        if self.draining:  # otherwise only stop() looks at _idle
            self._idle.clear()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if not self.in_flight and self.draining:
            self._idle.set()

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        """Accept connections on the socket (HTTPS with ``tls``: a TLS handshake that
        takes longer than a request head may is dropped)."""
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: self.connection_type(self),
            sock=self.sock,
            backlog=2048,
            ssl=tls,
            ssl_handshake_timeout=self.limits.header_timeout if tls is not None else None,
        )

    async def stop(self, timeout: float) -> None:
        """Stop accepting, finish in-flight requests (up to ``timeout``), close the rest."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.shutdown()
        if self.in_flight:
            self._idle.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("%d request(s) still in flight after %ss; closing", self.in_flight, timeout)
        for connection in list(self.connections):
            connection._close()
