"""The gateway's HTTP requests: ``/api/predict/<service>/<path>`` -> ``/<path>`` on an instance.

Per request (:class:`HttpExchange`, served by :mod:`openeas.gateway.http1`): find the
service (for a service group's name: check the group's token, then take the member
service its smooth weighted round robin chooses, see :meth:`GatewayCore.member`; the
request is then one to that service), check the token, admit it (rate limit), choose
an instance (sequence affinity, else least outstanding, waiting in the service's queue
when all are busy), forward the request byte for byte over a pooled keep-alive
connection and relay the answer.

The common case, an instance with a free slot and an idle connection and no sequence,
runs in callbacks only: the request is written upstream from the client connection's
``data_received`` and the answer written back from the upstream one's.  Everything else
(queueing, connecting, retrying elsewhere, sequences, telling 408 from 504) runs the
shared coroutine path :meth:`GatewayCore.forward` in a task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
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
from openeas.gateway.http1 import ClientConnection
from openeas.gateway.metrics import access_log
from openeas.gateway.routes import Upstream
from openeas.gateway.sequences import SequenceInfo, http_sequence
from openeas.gateway.upstream import (
    PIPELINE_MAX_BODY,
    UpstreamClosed,
    UpstreamConnection,
    UpstreamResponse,
)
from openeas.transport.http1 import split_url

log = logging.getLogger(__name__)

PREFIX = b"/api/predict/"
_PREFIX_LEN = len(PREFIX)
#: The processor's HTTP API uses only these.
_METHODS = frozenset({b"GET", b"POST"})
#: Request headers that describe this hop, not the request (RFC 9110 7.6.1), plus the
#: token, which the instance does not need, and the framing, which is rewritten.
_REQUEST_SKIP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization", b"te",
        b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length",
        b"authorization", b"expect",
    }
)  # fmt: skip
_JSON = b"content-type: application/json\r\n"
_ALLOW = b"allow: GET, POST\r\n"
_CODES: dict[int, str] = {}


def _code(status: int) -> str:
    code = _CODES.get(status)
    if code is None:
        code = _CODES[status] = str(status)
    return code


def check_head(
    core: GatewayCore,
    client: ClientConnection,
    method: bytes,
    url: bytes,
    headers: list[tuple[bytes, bytes]],
) -> HttpExchange | None:
    """The exchange that refuses a request on its head (unknown service, no valid
    token), or None: a large body is read only once this passes (GatewayHttpServer's
    ``head_check``).  The refusal is answered, counted and logged like any other."""
    raw_path, _ = split_url(url)
    if not raw_path.startswith(PREFIX):
        return None  # refused as usual once read (a small body: nothing buffered)
    name = raw_path[_PREFIX_LEN:].partition(b"/")[0].decode("ascii", "replace")
    label = "-"
    try:
        authorization = next((v for k, v in headers if k == b"authorization"), None)
        addressed = core.target(unquote(name))
        if not isinstance(addressed, ServiceState):  # a group: its member is chosen in _start
            check_token(addressed, authorization)
            return None
        label = addressed.name
        check_token(addressed.route(), authorization)
    except GatewayError as exc:
        refused = _Refused(core, client, method, url, headers, exc)
        refused.service, refused.label = name, label
        return refused
    return None


class HttpExchange:
    """One client request through the gateway (a :class:`~openeas.gateway.http1.Handler`
    result): started by the client connection, answered through it."""

    __slots__ = (
        "core", "client", "method", "url", "headers", "body", "started", "service",
        "label", "raw_path", "state", "target", "conn", "task",
    )  # fmt: skip

    def __init__(
        self,
        core: GatewayCore,
        client: ClientConnection,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        self.core = core
        self.client = client
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.service = self.label = "-"
        self.raw_path = b""
        self.state: ServiceState | None = None
        self.target: Upstream | None = None
        self.conn: UpstreamConnection | None = None
        self.task: asyncio.Task[None] | None = None

    # -- start: checks, then the fast or the slow path ----------------------------------

    def start(self) -> None:
        self.started = time.perf_counter()
        try:
            self._start()
        except GatewayError as exc:
            self._refuse(exc)

    def _start(self) -> None:
        """Checks, then the fast path or the slow one (GatewayError: refused)."""
        core = self.core
        raw_path, query = split_url(self.url)
        self.raw_path = raw_path
        if not raw_path.startswith(PREFIX):
            path = raw_path.decode("ascii", "replace")
            raise ServiceNotFound(
                f"no such endpoint: {unquote(path)}; services are served at "
                "/api/predict/<service>/..."
            )
        name, _, rest = raw_path[_PREFIX_LEN:].partition(b"/")
        service = self.service = name.decode("ascii", "replace")  # as sent: no CR/LF in logs
        addressed = core.target(unquote(service) if "%" in service else service)
        forward = _Forward.of(self.method, query, self.headers, self.body, rest)
        if isinstance(addressed, ServiceState):
            state, route = addressed, addressed.route()
            self.label = state.name  # a refusal is counted for the service
            check_token(route, forward.authorization)
        else:  # a group: served, limited and counted as a request to its chosen member
            state, route = core.member(addressed, forward.authorization)
            self.label = state.name
        if self.method not in _METHODS:
            raise MethodNotAllowed(
                f"method {self.method.decode('ascii', 'replace')} is not allowed; "
                "the service API uses GET and POST"
            )
        state.limiter.admit(route.limits.rate_limit, self.started)
        loop = core.loop
        assert loop is not None
        when = loop.time() + route.limits.keepalive_ms / 1000.0
        sequence = forward.sequence()
        target = state.pick_ready(route) if sequence is None else None
        state.in_flight += 1
        self.state = state
        if target is not None:
            state.routes.acquire(target.instance_id)
            pool = core.pool(target)
            conn = pool.take(forward.pipeline_key)
            if conn is not None:
                core.metrics.sent(state.name, target.instance_id)
                self.target = target
                self.conn = conn
                core.timeouts.add(self, when)
                conn.send(forward.data_for(pool.host_line), self)
                return
        # a task cancelled before its first step never runs its finally clauses
        self.target = target
        self.task = loop.create_task(self._slow(state, forward, sequence, when, target))

    # -- the fast path's outcomes (upstream.Receiver) -----------------------------------

    def upstream_response(self, response: UpstreamResponse) -> None:
        target = self._settle()
        self._answer(response.status, response.header_block, response.body, target.instance_id)

    def upstream_failed(self, exc: UpstreamClosed) -> None:
        target = self._settle()
        state = self.state
        assert state is not None
        self._refuse(
            UpstreamTimeout(
                f"instance {target.instance_id} of service '{state.name}' closed the "
                f"connection without answering ({exc})"
            )
        )

    def _settle(self) -> Upstream:
        """The upstream request is over: free its timer and the instance's slot."""
        state, target = self.state, self.target
        assert state is not None and target is not None
        self.core.timeouts.remove(self)
        self.conn = None
        state.release(target)
        state.in_flight -= 1
        return target

    def expire(self) -> None:
        """The keepalive passed while the instance had the request (fast path)."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        conn.cancel(self)  # alone on it, aborted: the instance learns nobody waits
        loop = self.core.loop
        assert loop is not None
        self.task = loop.create_task(self._after_expiry())

    async def _after_expiry(self) -> None:
        state, target = self.state, self.target
        assert state is not None and target is not None
        self.state = None  # started: abandon() leaves the release to this task
        try:
            error = await self.core.expired_error(state, target)
        finally:
            state.release(target)
            state.in_flight -= 1
        self._refuse(error)

    def abandon(self) -> None:
        if self.task is not None:
            if self.state is not None:  # the task has not started: release for it
                self.state.in_flight -= 1
                if self.target is not None:
                    self.state.release(self.target)
            self.task.cancel()  # once started, its finally clauses release what it holds
        elif self.conn is not None:
            self.conn.cancel(self)
            self._settle()

    # -- the slow path ----------------------------------------------------------------

    async def _slow(
        self,
        state: ServiceState,
        forward: _Forward,
        sequence: SequenceInfo | None,
        when: float,
        chosen: Upstream | None,
    ) -> None:
        self.state = None  # started: abandon() leaves the release to this task
        core = self.core
        assert core.loop is not None
        deadline = Deadline(core.loop, when)

        async def send(target: Upstream) -> UpstreamResponse:
            core.metrics.sent(state.name, target.instance_id)
            pool = core.pool(target)
            try:
                return await pool.request(forward.data_for(pool.host_line), deadline)
            except UpstreamClosed as exc:
                raise UpstreamTimeout(
                    f"instance {target.instance_id} of service '{state.name}' closed the "
                    f"connection without answering ({exc})"
                ) from None

        try:
            try:
                target, response = await core.forward(state, deadline, sequence, send, chosen)
            finally:
                deadline.cancel()
                state.in_flight -= 1
        except GatewayError as exc:
            self._refuse(exc)
            return
        except Exception:  # a bug must still answer the client, not leave it waiting
            log.exception("gateway request to service '%s' failed", state.name)
            self._answer(500, _JSON, b'{"error":"internal gateway error"}', "-")
            return
        self._answer(response.status, response.header_block, response.body, target.instance_id)

    # -- answering --------------------------------------------------------------------

    def _refuse(self, exc: GatewayError) -> None:
        status = exc.http_status
        block = _JSON + _ALLOW if status == 405 else _JSON
        self._answer(status, block, orjson.dumps({"error": exc.message}), "-")

    def _answer(self, status: int, header_block: bytes, body: bytes, instance: str) -> None:
        self.client.respond(self, status, header_block, body)
        elapsed = time.perf_counter() - self.started
        self.core.metrics.observe(self.label, "http", _code(status), elapsed)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "service=%s method=%s path=%s status=%d latency_ms=%.3f instance=%s "
                "bytes_in=%d bytes_out=%d",
                self.service, self.method.decode("ascii", "replace"),
                self.raw_path.decode("ascii", "replace"), status, elapsed * 1000.0,
                instance, len(self.body), len(body),
            )  # fmt: skip


class _Refused(HttpExchange):
    """A request refused on its head (:func:`check_head`); its body was never kept."""

    __slots__ = ("error",)

    def __init__(
        self,
        core: GatewayCore,
        client: ClientConnection,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        error: GatewayError,
    ) -> None:
        super().__init__(core, client, method, url, headers, b"")
        self.error = error

    def _start(self) -> None:
        self.raw_path = split_url(self.url)[0]
        raise self.error


class _Forward:
    """One client request, turned into the bytes sent upstream."""

    __slots__ = (
        "_head", "body", "authorization", "_header_length", "_encoding", "_infer",
        "pipeline_key",
    )  # fmt: skip

    def __init__(self, scope: Mapping[str, Any], body: bytes, rest: bytes) -> None:
        self._setup(scope["method"].encode(), scope["query_string"], scope["headers"], body, rest)

    @classmethod
    def of(
        cls,
        method: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        rest: bytes,
    ) -> _Forward:
        """The request ``method /rest?query`` with ``headers`` (names lower-cased)."""
        forward = cls.__new__(cls)
        forward._setup(method, query, headers, body, rest)
        return forward

    def _setup(
        self,
        method: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        rest: bytes,
    ) -> None:
        self.body = body
        self.authorization: bytes | None = None
        self._header_length: bytes | None = None
        self._encoding: bytes | None = None
        lines = [
            method,
            b" /",
            rest,
            b"?" + query if query else b"",
            b" HTTP/1.1\r\ncontent-length: %d\r\n" % len(body),
        ]
        hop: bytes | None = None
        for name, value in headers:
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
            lines.append(name + b": " + value + b"\r\n")
        if hop is not None:
            lines[5:] = _drop_connection_headers(lines[5:], hop)
        self._infer = method == b"POST" and rest.endswith(b"/infer")
        #: Inference requests to one model may share a connection (see InstancePool.take).
        self.pipeline_key = rest if self._infer and len(body) <= PIPELINE_MAX_BODY else None
        self._head = b"".join(lines)

    def data(self, upstream: Upstream) -> bytes:
        """The whole request for ``upstream``: head and body in one buffer."""
        host = b"host: %s:%d\r\n\r\n" % (upstream.host.encode(), upstream.http_port)
        return self.data_for(host)

    def data_for(self, host_line: bytes) -> bytes:
        """The whole request, with ``host_line`` (the host header and the blank line)."""
        return self._head + host_line + self.body

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
