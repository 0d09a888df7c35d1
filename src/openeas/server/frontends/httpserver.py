"""A small HTTP/1.1 server for ASGI apps, built on httptools and the running event loop.

Why not uvicorn: on the inference hot path every response costs two socket writes there
(status line + headers, then the body), and with tiny tensors those two system calls are
the largest cost of a request.  This server collects the whole request body before it
calls the app (the data plane needs all of it anyway) and writes each complete response
with one ``transport.write``.  It implements what Triton clients use: keep-alive,
pipelining (inference requests run concurrently; all are answered in order), chunked
request bodies, ``Expect: 100-continue``, a request body limit, an idle timeout and
graceful shutdown.  It is not a general ASGI server: no websockets, no lifespan, no
streaming request bodies.

An app that also implements :class:`DirectApp` is offered each request first, as plain
values rather than ASGI messages: the inference hot path answers with one pre-formatted
byte string and skips the scope dict, the receive/send closures and their messages.

The framing (parsing, the body limit, ``100 Continue``, idle timeout, graceful stop) is
:mod:`openeas.transport.http1`'s, shared with the gateway's listener; this module
adds the serving: the direct route or ASGI, pipelined requests answered in order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

from openeas.transport.eager import start_eagerly
from openeas.transport.http1 import (
    CLOCK,
    Http1Connection,
    Http1Server,
    HttpLimits,
    json_error,
    split_url,
    status_line,
)

__all__ = ["Asgi", "DirectApp", "DirectReply", "HttpProtocol", "HttpServer"]

log = logging.getLogger(__name__)

Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

#: A direct answer: status, the header lines (``b"name: value\r\n"`` each; no date,
#: content-length or connection, which the server adds) and the body.
DirectReply = tuple[int, bytes, bytes]


class DirectApp(Protocol):
    """An app with a fast path next to its ASGI interface."""

    def direct(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Coroutine[Any, Any, DirectReply] | None:
        """The reply to a request it serves directly, or None to serve it through ASGI.

        Called as the request is parsed; the coroutine runs once the requests before it
        on the connection allow (or is closed unstarted when the client goes away).

        ``path`` is percent-decoded; header names are lower case.  Errors must be answered
        as replies: an exception is logged and becomes a 500.
        """
        ...


_JSON_HEAD = b"content-type: application/json\r\n"


@dataclass(slots=True)
class _Request:
    """One parsed request waiting for (or being served by) the app."""

    method: str
    path: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    http_version: str
    body: bytes
    keep_alive: bool
    #: The direct route's coroutine (not started), or None: served through ASGI.
    direct: Coroutine[Any, Any, DirectReply] | None = None
    started: bool = False
    #: The answer, once the app has one (an ASGI request's is already written: b"").
    answer: bytes | None = None
    task: asyncio.Task[None] | None = None


class HttpProtocol(Http1Connection):
    """One client connection.

    Pipelined requests on the direct route run concurrently (each starts as soon as it
    is parsed) and are answered in order, so a client that pipelines, such as the
    gateway, gets the throughput of as many connections.  A request served through ASGI
    starts only when every request before it is answered, and the requests after it wait
    for it: those may depend on it (loading a model, then inferring).
    """

    _server: HttpServer

    def __init__(self, server: HttpServer) -> None:
        super().__init__(server)
        self._peer: tuple[str, int] | None = None
        self._local: tuple[str, int] | None = None
        # requests parsed but not answered, in order; the first _started ones are running
        self._pending: collections.deque[_Request] = collections.deque()
        self._started = 0
        self._base_scope: dict[str, Any] = {}
        self._writable = asyncio.Event()
        self._writable.set()

    def _busy(self) -> bool:
        return bool(self._pending)

    # -- connection lifecycle ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
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

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._writable.set()
        pending, self._pending = self._pending, collections.deque()
        self._started = 0
        for request in pending:
            if request.task is not None and not request.task.done():
                request.task.cancel()
            elif not request.started and request.direct is not None:
                request.direct.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._writable.clear()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._writable.set()

    # -- a parsed request (the parsing is Http1Connection's) ----------------------------

    def _complete(self) -> None:
        if self._too_large:
            server = self._server
            self._reject(server.too_large_status, server.too_large_json(self._body_size))
            return
        if self._stopped:
            return
        raw_path, query = split_url(self._url)
        path = raw_path.decode("ascii", "replace")
        if "%" in path:
            path = unquote(path)
        parser = self._parser
        method = parser.get_method().decode("ascii")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        headers = self._headers
        direct = self._server.direct
        self._pending.append(
            _Request(
                method,
                path,
                raw_path,
                query,
                headers,
                parser.get_http_version(),
                body,
                parser.should_keep_alive(),
                None if direct is None else direct(method, path, headers, body),
            )
        )
        if len(self._pending) > self._server.max_pipelined:
            self._set_pipeline_full(True)
        self._start_ready()

    # -- serving -----------------------------------------------------------------------

    def _start_ready(self) -> None:
        """Start the requests that may start: direct ones while only direct ones run
        before them; an ASGI one when it is the first unanswered request."""
        pending = self._pending
        while self._started < len(pending) and not self._closing:
            request = pending[self._started]
            if self._started:
                before = pending[self._started - 1]
                if not before.keep_alive or before.direct is None or request.direct is None:
                    return  # the connection's last request, or an ASGI one: wait for it
            self._started += 1
            request.started = True
            if request.direct is None:
                self._run(request, self._serve_asgi(request))
            else:
                self._run(request, self._serve_direct(request, request.direct))

    def _run(self, request: _Request, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` eagerly (:func:`~openeas.transport.eager.start_eagerly`)."""
        try:
            request.task = start_eagerly(self._loop, coro)
        except BaseException:
            log.exception("HTTP connection handler failed")
            self._close()

    async def _serve_direct(
        self, request: _Request, reply: Coroutine[Any, Any, DirectReply]
    ) -> None:
        server = self._server
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
        request.answer = b"".join(
            (
                status_line(status),
                CLOCK.line(),
                head,
                b"content-length: %d\r\n" % len(body),
                b"\r\n" if request.keep_alive else b"connection: close\r\n\r\n",
                body,
            )
        )
        self._answer_ready()

    def _answer_ready(self) -> None:
        """Write the answers that are next in order, then start what may start."""
        pending = self._pending
        while pending and pending[0].answer is not None:
            request = pending.popleft()
            self._started -= 1
            if request.answer:
                self.write_soon(request.answer)
            if not request.keep_alive:
                self._close()
                return
        if not pending:
            if self._final is not None:  # a refused request after these: answer it now
                self._all_answered()
                return
            if self._server.draining:  # what came before the stop is served
                self._close()
                return
        self._last_active = self._loop.time()
        if self._pipeline_full and len(pending) <= self._server.max_pipelined:
            self._set_pipeline_full(False)
        self._start_ready()

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
                return
        request.answer = b""  # written
        self._answer_ready()

    async def drain(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()


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
            parts = [status_line(message["status"]), CLOCK.line()]
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
            status_line(status)
            + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
            + body
        )
        self.started = True
        self._finish()


class HttpServer(Http1Server):
    """Serves one ASGI app on one listening socket (through its :class:`DirectApp` fast
    path first, when it has one).

    ``too_large_body(size)`` is the message (not yet JSON) of the answer to a body over
    ``max_body_size``.
    """

    connection_type = HttpProtocol

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
        limits: HttpLimits | None = None,
    ) -> None:
        super().__init__(
            sock,
            limits=limits,
            max_body_size=max_body_size,
            too_large_body=too_large_body
            or (lambda size: b"request body of %d bytes exceeds the limit" % size),
            too_large_status=too_large_status,
            keep_alive_timeout=keep_alive_timeout,
            max_pipelined=max_pipelined,
        )
        self.app = app
        #: The app's fast path (see DirectApp), when it has one.
        self.direct: Callable[..., Coroutine[Any, Any, DirectReply] | None] | None = getattr(
            app, "direct", None
        )

    def too_large_json(self, size: int) -> bytes:
        return json_error(self.too_large_body(size))
