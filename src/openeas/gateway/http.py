"""The gateway's HTTP front: ``/api/predict/<service>/<path>`` -> ``/<path>`` on an instance.

A raw ASGI app served by the processor's own HTTP/1.1 server
(:mod:`openeas.server.frontends.httpserver`), which hands over whole request bodies and
writes each response with one system call.  Per request: find the service, check the
token, admit it (rate limit), choose an instance (sequence affinity, else least
outstanding, waiting in the service's queue when all are busy), forward the request
byte for byte over a pooled keep-alive connection and relay the answer.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import unquote

import orjson

from openeas.gateway.balancer import ServiceState
from openeas.gateway.core import GatewayCore, check_token
from openeas.gateway.deadline import Deadline
from openeas.gateway.errors import (
    GatewayError,
    MethodNotAllowed,
    ServiceNotFound,
    UpstreamTimeout,
)
from openeas.gateway.metrics import access_log
from openeas.gateway.routes import Upstream
from openeas.gateway.sequences import SequenceInfo, http_sequence
from openeas.gateway.upstream import UpstreamClosed, UpstreamResponse

PREFIX = b"/api/predict/"
_PREFIX_LEN = len(PREFIX)
#: The processor's HTTP API uses only these.
_METHODS = frozenset({"GET", "POST"})
#: Request headers that describe this hop, not the request (RFC 9110 7.6.1), plus the
#: token, which the instance does not need, and the framing, which is rewritten.
_REQUEST_SKIP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization", b"te",
        b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length",
        b"authorization", b"expect",
    }
)  # fmt: skip
_RESPONSE_SKIP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"content-length", b"date",
    }
)  # fmt: skip
_JSON = (b"content-type", b"application/json")


def _error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


class GatewayHttpApp:
    """ASGI app of the gateway's HTTP port."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        core = self.core
        loop = core.loop
        assert loop is not None
        started = time.perf_counter()
        message = await receive()
        body: bytes = message.get("body", b"")
        service = label = "-"
        instance = "-"
        status = 500
        response_body = b""
        try:
            raw_path: bytes = scope["raw_path"]
            if not raw_path.startswith(PREFIX):
                raise ServiceNotFound(
                    f"no such endpoint: {scope['path']}; services are served at "
                    "/api/predict/<service>/..."
                )
            name, _, rest = raw_path[_PREFIX_LEN:].partition(b"/")
            service = name.decode("ascii", "replace")  # as sent: no CR/LF in the log
            state = core.state(unquote(service) if "%" in service else service)
            label = state.name
            route = state.route()
            request = _Forward(scope, body, rest)
            check_token(route, request.authorization)
            method = scope["method"]
            if method not in _METHODS:
                raise MethodNotAllowed(
                    f"method {method} is not allowed; the service API uses GET and POST"
                )
            state.limiter.admit(route.limits.rate_limit, started)
            state.in_flight += 1
            deadline = Deadline(loop, loop.time() + route.limits.keepalive_ms / 1000.0)
            try:
                upstream, response = await self._forward(state, request, deadline)
            finally:
                deadline.cancel()
                state.in_flight -= 1
            instance = upstream.instance_id
            status = response.status
            response_body = response.body
            headers = [h for h in response.headers if h[0] not in _RESPONSE_SKIP]
        except GatewayError as exc:
            status = exc.http_status
            response_body = _error_body(exc.message)
            headers = [_JSON]
            if status == 405:
                headers.append((b"allow", b"GET, POST"))
        headers.append((b"content-length", b"%d" % len(response_body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": response_body})
        elapsed = time.perf_counter() - started
        core.metrics.observe(label, "http", str(status), elapsed)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "service=%s method=%s path=%s status=%d latency_ms=%.3f instance=%s "
                "bytes_in=%d bytes_out=%d",
                service, scope["method"], scope["raw_path"].decode("ascii", "replace"),
                status, elapsed * 1000.0,
                instance, len(body), len(response_body),
            )  # fmt: skip

    async def _forward(
        self, state: ServiceState, request: _Forward, deadline: Deadline
    ) -> tuple[Upstream, UpstreamResponse]:
        """Send the request to an instance (connect failures are retried elsewhere)."""
        core = self.core

        async def send(target: Upstream) -> UpstreamResponse:
            core.metrics.sent(state.name, target.instance_id)
            try:
                return await core.pool(target).request(request.data(target), deadline)
            except UpstreamClosed as exc:
                raise UpstreamTimeout(
                    f"instance {target.instance_id} of service '{state.name}' closed the "
                    f"connection without answering ({exc})"
                ) from None

        return await core.forward(state, deadline, request.sequence(), send)


class _Forward:
    """One client request, turned into the bytes sent upstream."""

    __slots__ = ("_head", "body", "authorization", "_header_length", "_encoding", "_infer")

    def __init__(self, scope: dict[str, Any], body: bytes, rest: bytes) -> None:
        self.body = body
        self.authorization: bytes | None = None
        self._header_length: bytes | None = None
        self._encoding: bytes | None = None
        lines = []
        hop: bytes | None = None
        for name, value in scope["headers"]:
            if name in _REQUEST_SKIP:
                if name == b"authorization":
                    self.authorization = value
                elif name == b"connection":
                    hop = value
                continue
            if name == b"inference-header-content-length":
                self._header_length = value
            elif name == b"content-encoding":
                self._encoding = value
            lines.append(b"%s: %s\r\n" % (name, value))
        if hop is not None:
            lines = _drop_connection_headers(lines, hop)
        path = b"/" + rest
        query = scope["query_string"]
        if query:
            path += b"?" + query
        self._infer = scope["method"] == "POST" and rest.endswith(b"/infer")
        self._head = (
            scope["method"].encode()
            + b" "
            + path
            + b" HTTP/1.1\r\ncontent-length: %d\r\n" % len(body)
            + b"".join(lines)
        )

    def data(self, upstream: Upstream) -> bytes:
        """The whole request for ``upstream``: head and body in one buffer."""
        return (
            self._head
            + b"host: %s:%d\r\n\r\n"
            % (
                upstream.host.encode(),
                upstream.http_port,
            )
            + self.body
        )

    def sequence(self) -> SequenceInfo | None:
        if not self._infer or not self.body:
            return None
        return http_sequence(self.body, self._header_length, self._encoding)


def _drop_connection_headers(lines: list[bytes], connection: bytes) -> list[bytes]:
    """Also drop the headers that the Connection header names (hop-by-hop)."""
    names = {t.strip().lower() for t in connection.split(b",")} - {b"keep-alive", b"close"}
    if not names:
        return lines
    return [line for line in lines if line.split(b":", 1)[0] not in names]
