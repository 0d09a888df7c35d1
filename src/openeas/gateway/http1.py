"""The gateway's HTTP/1.1 listener: client connections, framing, keep-alive, graceful stop.

A dedicated server rather than the processor's ASGI one: a request that goes to an idle
instance connection is handled entirely in callbacks (parse, forward, relay), with no
ASGI messages, coroutine or task per request, which is most of a gateway's Python cost.
What happens to a request is the :class:`Handler`'s business; this module only frames
it, on the framing it shares with the processor's server
(:mod:`openeas.transport.http1`: parsing, chunked request bodies, ``Expect:
100-continue``, the body size limit, the idle timeout and the graceful stop) and adds
keep-alive and pipelining (answered in order, one at a time).
"""

from __future__ import annotations

import collections
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from openeas.transport.http1 import (
    CLOCK,
    Http1Connection,
    Http1Server,
    HttpLimits,
    status_line,
)

__all__ = ["ClientConnection", "Exchange", "GatewayHttpServer", "Handler", "status_line"]

log = logging.getLogger(__name__)

_CLOSE = b"connection: close\r\n"


class Exchange(Protocol):
    """One request being handled (what a :class:`Handler` returns)."""

    def start(self) -> None:
        """Handle the request; the answer comes through :meth:`ClientConnection.respond`."""

    def abandon(self) -> None:
        """The client went away before the answer: stop and release what it holds."""


#: Checks a request on its head, before its body is read: None to go on, or the
#: :class:`Exchange` that refuses it (started, without a body, once the body is dropped).
HeadCheck = Callable[
    ["ClientConnection", bytes, bytes, list[tuple[bytes, bytes]]], "Exchange | None"
]
#: Bodies up to this size are read before the request is checked (they arrive with the
#: head anyway); a larger one is checked first (the token) and dropped when refused.
EARLY_CHECK_BYTES = 64 * 1024


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


@dataclass(slots=True)
class _Pending:
    """A pipelined request waiting for the ones before it to be answered."""

    method: bytes
    url: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    refused: Exchange | None


class ClientConnection(Http1Connection):
    """One client connection: requests are parsed, handled one at a time, answered in order."""

    _server: GatewayHttpServer

    def __init__(self, server: GatewayHttpServer) -> None:
        super().__init__(server)
        self._pending: collections.deque[_Pending] = collections.deque()
        #: The request being handled, its keep-alive, and whether _advance() is running.
        self._active: Exchange | None = None
        self._keep_alive = True
        self._advancing = False
        #: The refusal of the request being received, decided on its head.
        self._refused: Exchange | None = None

    def _busy(self) -> bool:
        return self._active is not None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._pending.clear()
        active, self._active = self._active, None
        if active is not None:
            self._server.request_finished()
            active.abandon()

    # -- a parsed request (the parsing is Http1Connection's) ----------------------------

    def _body_passes(self) -> None:
        # a large body is coming: check the request (its token) before buffering it
        check = self._server.head_check
        if check is not None:
            method = self._parser.get_method()
            self._refused = check(self, method, self._url, self._headers)
            self._discard_body = self._refused is not None

    def _complete(self) -> None:
        if self._stopped:
            return
        refused, self._refused = self._refused, None
        if self._too_large and refused is None:
            self._reject(
                self._server.too_large_status, self._server.too_large_body(self._body_size)
            )
            return
        parser = self._parser
        parts = self._body
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        if self._active is None and not self._pending and not self._closing:
            self._keep_alive = parser.should_keep_alive()
            self._run(parser.get_method(), self._url, self._headers, body, refused)
            if self._pending:  # it answered at once, and more requests came meanwhile
                self._advance()
            return
        self._pending.append(
            _Pending(
                parser.get_method(),
                self._url,
                self._headers,
                body,
                parser.should_keep_alive(),
                refused,
            )
        )
        if len(self._pending) > self._server.max_pipelined:
            self._set_pipeline_full(True)
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
                self._run(
                    request.method, request.url, request.headers, request.body, request.refused
                )
            if self._pipeline_full and len(pending) <= self._server.max_pipelined:
                self._set_pipeline_full(False)
        finally:
            self._advancing = False

    def _run(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        refused: Exchange | None = None,
    ) -> None:
        """Hand one request (the next to answer) to the handler (or start the exchange
        that refused it on its head)."""
        exchange = refused or self._server.handler(self, method, url, headers, body)
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
        self.write(
            status_line(status)
            + CLOCK.line()
            + header_block
            + b"content-length: %d\r\n" % len(body)
            + (b"\r\n" if keep_alive else _CLOSE + b"\r\n")
            + body
        )
        if not keep_alive:
            self._close()
        elif self._pending:
            self._advance()
        if self._active is None and not self._pending and self._final is not None:
            self._all_answered()  # a request refused after this one: answer it now


class GatewayHttpServer(Http1Server):
    """Serves a :class:`Handler` on one listening socket.

    ``too_large_body(size)`` is the JSON body of the 413 answer to a body over
    ``max_body_size``.
    """

    connection_type = ClientConnection

    def __init__(
        self,
        handler: Handler,
        sock: socket.socket,
        *,
        max_body_size: int,
        too_large_body: Callable[[int], bytes],
        keep_alive_timeout: float = 75.0,
        max_pipelined: int = 32,
        limits: HttpLimits | None = None,
        head_check: HeadCheck | None = None,
    ) -> None:
        super().__init__(
            sock,
            limits=limits,
            early_body_check=EARLY_CHECK_BYTES if head_check is not None else None,
            max_body_size=max_body_size,
            too_large_body=too_large_body,
            too_large_status=413,
            keep_alive_timeout=keep_alive_timeout,
            max_pipelined=max_pipelined,
        )
        self.handler = handler
        #: Checks the head of a request with a large body before the body is read.
        self.head_check = head_check
