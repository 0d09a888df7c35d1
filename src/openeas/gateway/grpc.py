"""The gateway's gRPC front: ``inference.GRPCInferenceService`` passed through as bytes.

It is served by the processor's own gRPC transport
(:mod:`openeas.transport.grpc_transport`), each method with identity codecs, so
messages are never deserialised: the handler gets the message bytes and the call's
metadata, and forwards both, as they came, to the chosen instance with the gateway's
own client (:mod:`openeas.gateway.grpc_upstream`).  The service is named
by the ``x-eas-service`` metadata, or found from the ``authorization`` token when exactly
one service has it; a service group's name (or token) stands for the member service
chosen for the call (:meth:`GatewayCore.member`), which then serves it as its own.  The
token is checked on the call's headers, before its message is read
(:attr:`~openeas.transport.grpc_transport.Method.admit`), so a call without a valid
token costs no buffering.  Unary calls are bounded by ``rpc.keepalive``; a stream
(``ModelStreamInfer``) stays on the instance chosen when it opened, for as long as the
client keeps it.  An instance's error is passed on with its code, message and trailing
metadata.

A unary call that can go straight out (no sequence, an instance with a free slot and an
open connection with room) runs in callbacks only (:class:`_FastCall`, the transport's
``direct`` path): the call is written upstream from the client connection's
``data_received`` and answered from the upstream connection's, with no coroutine, task,
future or timer of its own (its keepalive is an entry in the shared
:class:`~openeas.gateway.deadline.Timeouts`).  Everything else (queueing, connecting,
retrying elsewhere, sequences, telling 408 from 504) takes the coroutine path.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from tritonclient.grpc import service_pb2 as pb

from openeas.gateway.balancer import ServiceState
from openeas.gateway.core import GatewayCore
from openeas.gateway.deadline import Deadline, Expired
from openeas.gateway.errors import GatewayError, KeepaliveExceeded, NoInstance, UpstreamTimeout
from openeas.gateway.grpc_upstream import GrpcConnection
from openeas.gateway.metrics import access_log
from openeas.gateway.routes import Upstream
from openeas.gateway.sequences import grpc_sequence
from openeas.gateway.upstream import ConnectFailed, UpstreamClosed
from openeas.transport.grpc_call import GrpcError, Headers, Kind, Method, kind_of
from openeas.transport.grpc_handlers import UnaryReply

SERVICE = "inference.GRPCInferenceService"
SERVICE_PREFIX = f"/{SERVICE}/"
INFER_METHOD = SERVICE_PREFIX + "ModelInfer"
#: Metadata the gateway consumes or that belongs to this hop only (and ``grpc-*``).
_SKIP = frozenset({b"authorization", b"x-eas-service", b"user-agent", b"content-type", b"te"})


def _identity(message: bytes) -> bytes:
    return message


def _split_metadata(headers: Headers) -> tuple[bytes | None, str | None, Headers]:
    """The token, the ``x-eas-service`` name and the metadata to forward."""
    token = service = None
    forward: Headers = []
    for name, value in headers:
        if name == b"authorization":
            token = value
        elif name == b"x-eas-service":
            service = value.decode("ascii", "replace")
        elif name not in _SKIP and not name.startswith((b":", b"grpc-")):
            forward.append((name, value))
    return token, service, forward


@dataclass(slots=True)
class Admitted:
    """A call whose headers passed the token check and the rate limit."""

    state: ServiceState
    forward: Headers  # the metadata to pass on to the instance
    when: float  # loop time of its ``rpc.keepalive`` deadline
    #: the instance the fast path chose (its slot acquired) and left to the coroutine
    chosen: Upstream | None = None


class GatewayGrpcFront:
    """Forwards ``inference.GRPCInferenceService`` calls to the services' instances."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    def methods(self) -> dict[bytes, Method]:
        """Every method of the service, for :class:`~openeas.transport.grpc_transport.
        GrpcServer`; streaming ones are forwarded as streams both ways."""
        table: dict[bytes, Method] = {}
        for rpc in pb.DESCRIPTOR.services_by_name[SERVICE.rpartition(".")[2]].methods:
            path = SERVICE_PREFIX + rpc.name
            direct = None
            if kind_of(rpc) is Kind.UNARY:
                kind, handler = Kind.UNARY, functools.partial(self.unary, path)
                direct = functools.partial(self.unary_direct, path, path.encode())
            else:
                kind, handler = Kind.BIDI_STREAM, functools.partial(self.stream, path)
            admit = functools.partial(self._admit, path)
            table[path.encode()] = Method(
                kind, handler, _identity, _identity, metadata=True, admit=admit, direct=direct
            )
        return table

    def _admit(self, method: str, headers: Headers) -> Admitted:
        """Check a call's headers as they arrive: the service, its token, its rate."""
        started = time.perf_counter()
        try:
            token, service, forward = _split_metadata(headers)
            name = service or self.core.service_for_token(token)
            # a group's call is served, limited and counted as one to its chosen member
            state, route = self.core.resolve(name, token)
            loop = self.core.loop
            assert loop is not None
            state.limiter.admit(route.limits.rate_limit, time.perf_counter())
        except GatewayError as exc:
            self.log("-", method, exc.grpc_code, started, "-", 0, 0)
            raise
        return Admitted(state, forward, loop.time() + route.limits.keepalive_ms / 1000.0)

    # -- unary -------------------------------------------------------------------------

    def unary_direct(
        self, method: str, path: bytes, request: bytes, admitted: Admitted, reply: UnaryReply
    ) -> bool:
        """Forward a unary call in callbacks when it can go out at once; False (the
        coroutine :meth:`unary` takes it) for a sequence's call, when every instance is
        busy or down, or the chosen one has no open connection with room."""
        state = admitted.state
        if method == INFER_METHOD and grpc_sequence(request) is not None:
            return False
        try:
            target = state.pick_ready(state.route())
        except GatewayError:
            return False  # the coroutine path says why, as it always has
        if target is None or target.grpc_port is None:
            return False
        conn = self.core.grpc(target).ready()
        if conn is None:  # the coroutine connects: to this instance, in its turn
            state.routes.acquire(target.instance_id)
            admitted.chosen = target
            return False
        fast = _FastCall(self, reply, state, target, method, len(request), conn)
        state.in_flight += 1
        state.routes.acquire(target.instance_id)
        self.core.metrics.sent(state.name, target.instance_id)
        fast.call = conn.open(path, admitted.forward, False, request, fast)
        self.core.timeouts.add(fast, admitted.when)
        reply.on_cancel = fast.cancelled
        return True

    async def unary(self, method: str, request: bytes, admitted: Admitted) -> bytes:
        loop = self.core.loop
        assert loop is not None
        started = time.perf_counter()
        service = instance = "-"
        code = grpc.StatusCode.OK
        size_out = 0
        try:
            state, forward = admitted.state, admitted.forward
            service = state.name
            state.in_flight += 1
            deadline = Deadline(loop, admitted.when)
            try:
                instance, response = await self._call(
                    state, method, request, forward, deadline, admitted
                )
            finally:
                deadline.cancel()
                state.in_flight -= 1
            size_out = len(response)
            return response
        except GatewayError as exc:
            code = exc.grpc_code
            raise
        except GrpcError as exc:  # the instance's own error, passed on
            code = exc.status
            raise
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self.log(service, method, code, started, instance, len(request), size_out)

    async def _call(
        self,
        state: ServiceState,
        method: str,
        request: bytes,
        forward: Headers,
        deadline: Deadline,
        admitted: Admitted,
    ) -> tuple[str, bytes]:
        core = self.core
        sequence = grpc_sequence(request) if method == INFER_METHOD else None
        path = method.encode()

        async def send(target: Upstream) -> bytes:
            core.metrics.sent(state.name, target.instance_id)
            try:
                return await core.grpc(target).unary(path, request, forward, deadline)
            except UpstreamClosed as exc:
                raise UpstreamTimeout(
                    f"instance {target.instance_id} of service '{state.name}' dropped the "
                    f"call without answering ({exc})"
                ) from None

        chosen, admitted.chosen = admitted.chosen, None
        target, response = await core.forward(state, deadline, sequence, send, chosen)
        return target.instance_id, response

    # -- streaming ---------------------------------------------------------------------

    async def stream(
        self, method: str, requests: AsyncIterator[bytes], admitted: Admitted
    ) -> AsyncIterator[bytes]:
        loop = self.core.loop
        assert loop is not None
        started = time.perf_counter()
        service = instance = "-"
        code = grpc.StatusCode.OK
        target: Upstream | None = None
        state: ServiceState | None = None
        try:
            state, forward = admitted.state, admitted.forward
            service = state.name
            state.in_flight += 1
            deadline = Deadline(loop, admitted.when)  # bounds the wait for an instance only
            try:
                target = await state.choose(deadline)
            except Expired:
                raise KeepaliveExceeded(
                    f"no instance of service '{service}' came free within rpc.keepalive"
                ) from None
            finally:
                deadline.cancel()
            instance = target.instance_id
            state.routes.acquire(instance)
            self.core.metrics.sent(service, instance)
            responses = self.core.grpc(target).stream(method.encode(), requests, forward)
            try:
                async for response in responses:
                    yield response
            except ConnectFailed as exc:
                self.core.mark_down(target)
                raise NoInstance(f"instance {instance} of service '{service}': {exc}") from None
            except UpstreamClosed as exc:
                raise UpstreamTimeout(
                    f"instance {instance} of service '{service}' dropped the stream ({exc})"
                ) from None
            finally:
                await responses.aclose()
        except GatewayError as exc:
            code = exc.grpc_code
            raise
        except GrpcError as exc:  # the instance's own error, passed on
            code = exc.status
            raise
        except (asyncio.CancelledError, GeneratorExit):  # the client went away
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            if state is not None:
                if target is not None:
                    state.release(target)
                if service != "-":
                    state.in_flight -= 1
            self.log(service, method, code, started, instance, 0, 0)

    def log(
        self,
        service: str,
        method: str,
        code: grpc.StatusCode,
        started: float,
        instance: str,
        size_in: int,
        size_out: int,
    ) -> None:
        elapsed = time.perf_counter() - started
        self.core.metrics.observe(service, "grpc", code.name, elapsed)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "service=%s method=%s status=%s latency_ms=%.3f instance=%s "
                "bytes_in=%d bytes_out=%d",
                service, method.rsplit("/", 1)[-1], code.name, elapsed * 1000.0,
                instance, size_in, size_out,
            )  # fmt: skip


class _FastCall:
    """A unary call forwarded in callbacks (:meth:`GatewayGrpcFront.unary_direct`): the
    upstream connection's receiver, the keepalive's entry in the shared timeouts and
    the client call's cancel hook."""

    __slots__ = ("front", "reply", "state", "target", "method", "size_in", "conn", "call",
                 "started")  # fmt: skip

    def __init__(
        self,
        front: GatewayGrpcFront,
        reply: UnaryReply,
        state: ServiceState,
        target: Upstream,
        method: str,
        size_in: int,
        conn: GrpcConnection,
    ) -> None:
        self.front = front
        self.reply = reply
        self.state = state
        self.target = target
        self.method = method
        self.size_in = size_in
        self.conn = conn
        self.call: Any = None  # the upstream call while it runs
        self.started = time.perf_counter()

    def _settle(self) -> None:
        """The upstream call is over: free its timeout and the instance's slot."""
        self.front.core.timeouts.remove(self)
        self.state.release(self.target)
        self.state.in_flight -= 1

    def _log(self, code: grpc.StatusCode, size_out: int = 0) -> None:
        self.front.log(
            self.state.name, self.method, code, self.started, self.target.instance_id,
            self.size_in, size_out,
        )  # fmt: skip

    def upstream_done(self, outcome: bytes | BaseException) -> None:
        """The instance's answer or error (grpc_upstream.Receiver)."""
        self.call = None
        self._settle()
        if isinstance(outcome, bytes):
            self.reply.respond(outcome)
            self._log(grpc.StatusCode.OK, len(outcome))
            return
        if isinstance(outcome, ConnectFailed):  # not run: another instance, as usual
            self.front.core.mark_down(self.target)
            self.reply.fallback()
            return
        error: Exception
        if isinstance(outcome, GrpcError):
            error, code = outcome, outcome.status
        elif isinstance(outcome, UpstreamClosed):
            error = UpstreamTimeout(
                f"instance {self.target.instance_id} of service '{self.state.name}' dropped "
                f"the call without answering ({outcome})"
            )
            code = error.grpc_code
        else:  # pragma: no cover - the connection delivers only the errors above
            error, code = (
                GrpcError(grpc.StatusCode.INTERNAL, str(outcome)),
                grpc.StatusCode.INTERNAL,
            )
        self.reply.fail(error)
        self._log(code)

    def cancelled(self) -> None:
        """The client reset the call, its deadline passed or its connection went."""
        call, self.call = self.call, None
        if call is None:
            return  # the keepalive's probe is running: it settles
        self.conn.cancel(call)  # the instance cancels it too
        self._settle()
        self._log(grpc.StatusCode.CANCELLED)

    def expire(self) -> None:
        """The keepalive passed while the instance had the call: reset it, then 408 or
        504 as :meth:`GatewayCore.expired_error` finds."""
        call, self.call = self.call, None
        if call is None:
            return
        self.conn.cancel(call)
        loop = self.front.core.loop
        assert loop is not None
        loop.create_task(self._after_expiry())

    async def _after_expiry(self) -> None:
        try:
            error = await self.front.core.expired_error(self.state, self.target)
        finally:
            self.state.release(self.target)
            self.state.in_flight -= 1
        self.reply.fail(error)
        self._log(error.grpc_code)
