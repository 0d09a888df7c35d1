"""HTTP/1.1 framing shared by the processor's server and the gateway's listener.

Both answer each request with one ``transport.write``, so neither can sit on a general
server; what they share lives here, once: the status lines and the ``date`` header (both
cached), the listening socket, and the connection and server skeletons on httptools and
the running event loop:

* :class:`Http1Connection` parses a client's requests (chunked bodies, ``Expect:
  100-continue``, the body size limit), rejects malformed ones, and closes the connection
  when it stays idle past the keep-alive timeout or when the server stops;
* :class:`Http1Server` accepts connections, counts the requests in flight and stops
  gracefully (stop accepting, finish what is in flight up to a timeout, close the rest).

What differs is a subclass's business, in plain methods rather than per-request hooks:
its ``on_message_complete`` takes a finished request (``_url``, ``_headers``, ``_body``
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
import socket
import time
from collections.abc import Callable

import httptools

log = logging.getLogger(__name__)

_REASONS = {
    100: b"Continue", 200: b"OK", 204: b"No Content", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 413: b"Payload Too Large",
    429: b"Too Many Requests", 450: b"Queue Full", 500: b"Internal Server Error",
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


def json_error(message: bytes) -> bytes:
    """``{"error":"<message>"}``."""
    text = message.decode("utf-8", "replace").replace("\\", "\\\\").replace('"', '\\"')
    return b'{"error":"' + text.replace("\n", " ").encode() + b'"}'


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; OSError names the address when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"failed to bind {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP transport (each answer is one complete write)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def split_url(url: bytes) -> tuple[bytes, bytes]:
    """A request target's raw path and query (the common origin form without parsing)."""
    if b"?" in url or b"#" in url or not url.startswith(b"/"):
        parsed = httptools.parse_url(url)
        return parsed.path, parsed.query or b""
    return url, b""


class Http1Connection(asyncio.Protocol, abc.ABC):
    """One client connection: parsing, rejection, idle timeout and closing.

    A subclass adds ``on_message_complete`` (serve the request just parsed) and
    ``_busy``; one that extends ``connection_made`` or ``connection_lost`` calls these.
    """

    def __init__(self, server: Http1Server) -> None:
        self._server = server
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        # pipelined data after a "Connection: close" request is not an error (RFC 9112
        # 9.6): the requests up to it are answered, the rest never read
        self._parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self._transport: asyncio.Transport | None = None
        # parsing state of the current message
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False
        self._closing = False
        self._idle_handle: asyncio.TimerHandle | None = None
        self._last_active = 0.0
        self._later: list[bytes] | None = None  # see write_soon()

    @abc.abstractmethod
    def _busy(self) -> bool:
        """Whether a request is being served (the connection is not idle)."""

    # -- connection lifecycle ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is duck-typed
        set_nodelay(transport)
        self._server.connections.add(self)
        # the keep-alive timer: one per connection, re-armed lazily by _check_idle
        self._last_active = self._loop.time()
        if self._server.keep_alive_timeout > 0:
            self._idle_handle = self._loop.call_later(
                self._server.keep_alive_timeout, self._check_idle
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._closing = True
        self._later = None
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None

    def data_received(self, data: bytes) -> None:
        self._last_active = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, json_error(b"protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            self._reject(400, json_error(f"malformed HTTP request: {exc}".encode()))

    # -- httptools callbacks (on_message_complete is the subclass's) ---------------------

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
            self.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._body_size += len(body)
        if self._body_size > self._server.max_body_size:
            self._too_large = True
            self._body = []
            return
        self._body.append(body)

    # -- writing and closing -----------------------------------------------------------

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

    def _reject(self, status: int, body: bytes) -> None:
        """Answer a request that cannot be served with a JSON ``body``, then close (the
        stream is lost)."""
        self.write(
            status_line(status)
            + b"content-type: application/json\r\nconnection: close\r\n"
            + b"content-length: %d\r\n\r\n" % len(body)
            + body
        )
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self._later is not None:
            self.flush()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def shutdown(self) -> None:
        """Close now when idle; otherwise after the answer in progress."""
        if not self._busy():
            self._close()

    def _check_idle(self) -> None:
        timeout = self._server.keep_alive_timeout
        idle_for = self._loop.time() - self._last_active
        busy = self._busy()
        if not busy and idle_for >= timeout:
            self._close()
            return
        delay = timeout if busy else max(timeout - idle_for, 0.05)
        self._idle_handle = self._loop.call_later(delay, self._check_idle)


class Http1Server:
    """Serves connections of ``connection_type`` on one listening socket.

    ``too_large_body(size)`` is the answer (status ``too_large_status``) to a request
    whose body passes ``max_body_size``; what it returns is the subclass's convention.
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
    ) -> None:
        self.sock = sock
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

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: self.connection_type(self), sock=self.sock, backlog=2048
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
