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

The framing (parsing, the body limit, ``100 Continue``, idle timeout, graceful stop) is
:mod:`openeas.server.frontends.http1`'s, shared with the gateway's listener; this module
adds the serving: the direct route or ASGI, pipelined requests answered in order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

import httptools

from openeas.server.frontends.http1 import (
    CLOCK,
    Http1Connection,
    Http1Server,
    json_error,
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
    ) -> Awaitable[DirectReply] | None:
        """The reply to a request it serves directly, or None to serve it through ASGI.

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


class HttpProtocol(Http1Connection):
    """One client connection."""

    _server: HttpServer

    def __init__(self, server: HttpServer) -> None:
        super().__init__(server)
        self._peer: tuple[str, int] | None = None
        self._local: tuple[str, int] | None = None
        # requests parsed but not answered, in order
        self._pending: collections.deque[_Request] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._base_scope: dict[str, Any] = {}
        self._writable = asyncio.Event()
        self._writable.set()
        self._reading_paused = False

    def _busy(self) -> bool:
        return self._task is not None

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
        if isinstance(self._task, asyncio.Task) and not self._task.done():
            self._task.cancel()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- httptools callbacks (the others are Http1Connection's) -------------------------

    def on_message_complete(self) -> None:
        if self._too_large:
            server = self._server
            self._reject(
                server.too_large_status, json_error(server.too_large_body(self._body_size))
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
                    self.write_soon(
                        b"".join(
                            (
                                status_line(status),
                                CLOCK.line(),
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

    async def drain(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()


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
    ) -> None:
        super().__init__(
            sock,
            max_body_size=max_body_size,
            too_large_body=too_large_body
            or (lambda size: b"request body of %d bytes exceeds the limit" % size),
            too_large_status=too_large_status,
            keep_alive_timeout=keep_alive_timeout,
            max_pipelined=max_pipelined,
        )
        self.app = app
        #: The app's fast path (see DirectApp), when it has one.
        self.direct: Callable[..., Awaitable[DirectReply] | None] | None = getattr(
            app, "direct", None
        )
