"""A small HTTP/1.1 server for ASGI apps, built on httptools and the running event loop.

Why not uvicorn: on the inference hot path every response costs two socket writes there
(status line + headers, then the body), and with tiny tensors those two system calls are
the largest cost of a request.  This server collects the whole request body before it
calls the app (the data plane needs all of it anyway) and writes each complete response
with one ``transport.write``.  It implements what Triton clients use: keep-alive,
pipelining (answered in order), chunked request bodies, ``Expect: 100-continue``, a
request body limit, an idle timeout and graceful shutdown.  It is not a general ASGI
server: no websockets, no lifespan, no streaming request bodies.

An app that also implements :class:`DirectApp` is offered each request first, as plain
values rather than ASGI messages: the inference hot path answers with one pre-formatted
byte string and skips the scope dict, the receive/send closures and their messages.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import unquote

import httptools

log = logging.getLogger(__name__)

Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

#: A direct answer: status, the header lines (``b"name: value\r\n"`` each; no date,
#: content-length or connection, which the server adds) and the body.
DirectReply = tuple[int, bytes, bytes]


class DirectApp(Protocol):
    """An app with a fast path next to its ASGI interface."""

    def direct(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Awaitable[DirectReply] | None:
        """The reply to a request it serves directly, or None to serve it through ASGI.

        ``path`` is percent-decoded; header names are lower case.  Errors must be answered
        as replies: an exception is logged and becomes a 500.
        """
        ...


_REASONS = {
    100: b"Continue", 200: b"OK", 204: b"No Content", 400: b"Bad Request",
    401: b"Unauthorized", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Payload Too Large", 429: b"Too Many Requests",
    450: b"Queue Full", 500: b"Internal Server Error", 501: b"Not Implemented",
    503: b"Service Unavailable", 504: b"Gateway Timeout",
}  # fmt: skip
_STATUS_LINES: dict[int, bytes] = {}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_JSON_HEAD = b"content-type: application/json\r\n"


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        reason = _REASONS.get(status, b"")
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    return line


class _Clock:
    """The ``Date`` header, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._header = b""

    def date_header(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._header = b"date: " + email.utils.formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._header


_CLOCK = _Clock()


class _Request:
    """One parsed request waiting for (or being served by) the app."""

    __slots__ = (
        "method",
        "path",
        "raw_path",
        "query",
        "headers",
        "http_version",
        "body",
        "keep_alive",
    )

    def __init__(
        self,
        method: str,
        path: str,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        http_version: str,
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.raw_path = raw_path
        self.query = query
        self.headers = headers
        self.http_version = http_version
        self.body = body
        self.keep_alive = keep_alive


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[str, int] | None = None
        self._local: tuple[str, int] | None = None
        # parsing state of the current message
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect_continue = False
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False
        # requests parsed but not answered, in order
        self._pending: collections.deque[_Request] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._base_scope: dict[str, Any] = {}
        self._idle_handle: asyncio.TimerHandle | None = None
        self._last_active = 0.0
        self._writable = asyncio.Event()
        self._writable.set()
        self._reading_paused = False

    # -- connection lifecycle ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is duck-typed
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self._peer = tuple(peer[:2]) if isinstance(peer, tuple) else None  # type: ignore[assignment]
        self._local = tuple(local[:2]) if isinstance(local, tuple) else None  # type: ignore[assignment]
        self._base_scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "scheme": "http",
            "root_path": "",
            "server": self._local,
            "client": self._peer,
        }
        self._server.connections.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._closing = True
        self._cancel_idle_timer()
        self._writable.set()
        if isinstance(self._task, asyncio.Task) and not self._task.done():
            self._task.cancel()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

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
        self._expect_continue = False
        self._body = []
        self._body_size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect_continue = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._expect_continue:
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

    def on_message_complete(self) -> None:
        if self._too_large:
            self._reject(
                self._server.too_large_status, self._server.too_large_body(self._body_size)
            )
            return
        url = self._url
        if b"?" in url or b"#" in url or not url.startswith(b"/"):
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path, parsed.query or b""
        else:
            raw_path, query = url, b""
        path = raw_path.decode("ascii", "replace")
        parser = self._parser
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._pending.append(
            _Request(
                parser.get_method().decode("ascii"),
                unquote(path) if "%" in path else path,
                raw_path,
                query,
                self._headers,
                parser.get_http_version(),
                body,
                parser.should_keep_alive(),
            )
        )
        if self._task is None:
            self._start_serving()

    def _start_serving(self) -> None:
        """Run the app eagerly; only a request that really waits becomes a task.

        Most requests to cheap models complete without ever suspending, so creating and
        scheduling a task for each would cost more than the request itself (Python
        3.12's eager task factory does the same; this server runs on 3.11 too).
        """
        coro = self._serve_pending()
        self._task = _EAGER  # requests arriving meanwhile queue behind this one
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        except BaseException:
            self._task = None
            log.exception("HTTP connection handler failed")
            self._close()
            return
        self._task = self._loop.create_task(_resume(coro, waiting))

    # -- serving -----------------------------------------------------------------------

    async def _serve_pending(self) -> None:
        pending = self._pending
        server = self._server
        direct = server.direct
        try:
            while pending and not self._closing:
                request = pending[0]
                if len(pending) > server.max_pipelined and self._transport:
                    self._transport.pause_reading()
                    self._reading_paused = True
                reply = (
                    None
                    if direct is None
                    else direct(request.method, request.path, request.headers, request.body)
                )
                if reply is None:
                    await self._serve_asgi(request)
                else:
                    # inline rather than a method: one coroutine less per request
                    server.request_started()
                    try:
                        status, head, body = await reply
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("unhandled error in the HTTP app")
                        status, head, body = 500, _JSON_HEAD, b'{"error":"internal server error"}'
                    finally:
                        server.request_finished()
                    self.write(
                        b"".join(
                            (
                                _status_line(status),
                                _CLOCK.date_header(),
                                head,
                                b"content-length: %d\r\n" % len(body),
                                b"\r\n" if request.keep_alive else b"connection: close\r\n\r\n",
                                body,
                            )
                        )
                    )
                pending.popleft()
                if not request.keep_alive or server.draining:
                    self._close()
                    return
                if (
                    self._reading_paused
                    and self._transport is not None
                    and not self._transport.is_closing()
                ):
                    self._transport.resume_reading()
                    self._reading_paused = False
        finally:
            self._task = None
            self._last_active = self._loop.time()

    def _scope(self, request: _Request) -> dict[str, Any]:
        scope = dict(self._base_scope)
        scope["http_version"] = request.http_version
        scope["method"] = request.method
        scope["path"] = request.path
        scope["raw_path"] = request.raw_path
        scope["query_string"] = request.query
        scope["headers"] = request.headers
        return scope

    async def _serve_asgi(self, request: _Request) -> None:
        responder = _Responder(self, request.keep_alive)
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await responder.wait_finished()
            return {"type": "http.disconnect"}

        self._server.request_started()
        try:
            await self._server.app(self._scope(request), receive, responder.send)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error in the HTTP app")
            if not responder.started:
                responder.write_simple(500, b'{"error":"internal server error"}')
        finally:
            self._server.request_finished()
        if not responder.complete:
            if not responder.started:
                responder.write_simple(500, b'{"error":"the app sent no response"}')
            else:
                self._close()

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def drain(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()

    def _reject(self, status: int, message: bytes) -> None:
        body = b'{"error":' + _json_string(message) + b"}"
        self.write(
            _status_line(status)
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
        """Close now when idle; otherwise after the response in progress."""
        if self._task is None:
            self._close()

    def _arm_idle_timer(self) -> None:
        """Start the keep-alive timer: one timer per connection, re-armed lazily."""
        self._last_active = self._loop.time()
        if self._server.keep_alive_timeout > 0:
            self._idle_handle = self._loop.call_later(
                self._server.keep_alive_timeout, self._check_idle
            )

    def _check_idle(self) -> None:
        timeout = self._server.keep_alive_timeout
        idle_for = self._loop.time() - self._last_active
        if self._task is None and idle_for >= timeout:
            self._close()
            return
        delay = timeout if self._task is not None else max(timeout - idle_for, 0.05)
        self._idle_handle = self._loop.call_later(delay, self._check_idle)

    def _cancel_idle_timer(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None


#: Marks a connection whose handler is running eagerly (outside a task).
_EAGER: Any = object()


async def _resume(coro: Any, waiting: Any) -> None:
    """Drive a coroutine that suspended during its eager first step, as a task would.

    ``waiting`` is what it yielded: the future it awaits (or None for a bare yield).  The
    future's outcome reaches the coroutine when it is resumed, so it is not looked at here.
    """
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                waiting._asyncio_future_blocking = False  # as Task.__step does
                await waiting
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                coro.throw(asyncio.CancelledError())
        except BaseException:  # noqa: S110 - delivered to the coroutine on resume
            pass
        try:
            waiting = coro.send(None)
        except StopIteration:
            return


def _json_string(message: bytes) -> bytes:
    text = message.decode("utf-8", "replace").replace("\\", "\\\\").replace('"', '\\"')
    return b'"' + text.replace("\n", " ").encode() + b'"'


class _Responder:
    """The ASGI ``send`` of one request: buffers the head, writes it with the body."""

    __slots__ = (
        "_protocol",
        "_keep_alive",
        "_head",
        "_chunked",
        "started",
        "complete",
        "_finished",
    )

    def __init__(self, protocol: HttpProtocol, keep_alive: bool) -> None:
        self._protocol = protocol
        self._keep_alive = keep_alive
        self._head = b""
        self._chunked = False
        self.started = False
        self.complete = False
        self._finished: asyncio.Event | None = None

    async def wait_finished(self) -> None:
        """Wait until the response is complete (an app's receive() after the body)."""
        if self.complete:
            return
        if self._finished is None:
            self._finished = asyncio.Event()
        await self._finished.wait()

    def _finish(self) -> None:
        self.complete = True
        if self._finished is not None:
            self._finished.set()

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            parts = [_status_line(message["status"]), _CLOCK.date_header()]
            has_length = False
            for name, value in message.get("headers", ()):
                lowered = name.lower()
                if lowered == b"content-length":
                    has_length = True
                parts.append(b"%s: %s\r\n" % (name, value))
            if not has_length:
                self._chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            if not self._keep_alive:
                parts.append(b"connection: close\r\n")
            parts.append(b"\r\n")
            self._head = b"".join(parts)
        elif kind == "http.response.body":
            if not self.started or self.complete:
                raise RuntimeError("http.response.body outside a response")
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if self._chunked:
                data = (b"%x\r\n%s\r\n" % (len(body), body)) if body else b""
                if not more:
                    data += b"0\r\n\r\n"
            else:
                data = body
            if self._head:
                data = self._head + data
                self._head = b""
            self._protocol.write(data)
            if not more:
                self._finish()
            else:
                await self._protocol.drain()

    def write_simple(self, status: int, body: bytes) -> None:
        self._protocol.write(
            _status_line(status)
            + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
            + body
        )
        self.started = True
        self._finish()


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


class HttpServer:
    """Serves one ASGI app on one listening socket (through its :class:`DirectApp` fast
    path first, when it has one)."""

    def __init__(
        self,
        app: Asgi,
        sock: socket.socket,
        *,
        max_body_size: int = 64 * 1024 * 1024,
        too_large_body: Callable[[int], bytes] | None = None,
        too_large_status: int = 400,
        keep_alive_timeout: float = 75.0,
        max_pipelined: int = 32,
    ) -> None:
        self.app = app
        #: The app's fast path (see DirectApp), when it has one.
        self.direct: Callable[..., Awaitable[DirectReply] | None] | None = getattr(
            app, "direct", None
        )
        self.sock = sock
        self.max_body_size = max_body_size
        self.too_large_status = too_large_status
        self.too_large_body = too_large_body or (
            lambda size: b"request body of %d bytes exceeds the limit" % size
        )
        self.keep_alive_timeout = keep_alive_timeout
        self.max_pipelined = max_pipelined
        self.connections: set[HttpProtocol] = set()
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False
        self.loop = asyncio.get_event_loop()
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

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
            lambda: HttpProtocol(self), sock=self.sock, backlog=2048
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
