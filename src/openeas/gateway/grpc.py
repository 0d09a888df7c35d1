"""The gateway's gRPC front: ``inference.GRPCInferenceService`` passed through as bytes.

A ``grpc.aio`` generic handler takes every method of the service without deserialising
it (no request deserializer: the handler gets the message bytes) and forwards it on the
chosen instance's channel, also as bytes.  The service is named by the ``x-eas-service``
metadata, or found from the ``authorization`` token when exactly one service has it.
Unary calls are bounded by ``rpc.keepalive``; a stream (``ModelStreamInfer``) stays on
the instance chosen when it opened, for as long as the client keeps it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from openeas.gateway.balancer import ServiceState
from openeas.gateway.core import GatewayCore, check_token
from openeas.gateway.deadline import Deadline, Expired
from openeas.gateway.errors import GatewayError, KeepaliveExceeded
from openeas.gateway.metrics import access_log
from openeas.gateway.routes import Upstream
from openeas.gateway.sequences import grpc_sequence
from openeas.gateway.upstream import ConnectFailed

SERVICE_PREFIX = "/inference.GRPCInferenceService/"
STREAM_METHOD = SERVICE_PREFIX + "ModelStreamInfer"
INFER_METHOD = SERVICE_PREFIX + "ModelInfer"
#: Metadata the gateway consumes or that belongs to this hop only.
_SKIP = frozenset({"authorization", "x-eas-service", "user-agent", "content-type", "te"})
#: UNAVAILABLE details that mean the call never reached the instance.
_NOT_CONNECTED = ("failed to connect", "connection refused", "connections to all backends")

Metadata = Sequence[tuple[str, str | bytes]]


def _split_metadata(context: grpc.aio.ServicerContext) -> tuple[Any, str | None, Metadata]:
    token = service = None
    forward = []
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            token = value
        elif key == "x-eas-service":
            service = value if isinstance(value, str) else value.decode()
        elif key in _SKIP or key.startswith((":", "grpc-")):
            continue
        else:
            forward.append((key, value))
    return token, service, tuple(forward)


def _trailing(exc: grpc.aio.AioRpcError) -> tuple[tuple[str, str | bytes], ...]:
    """The instance's trailing metadata that may be sent on (no reserved keys)."""
    return tuple(
        (key, value)
        for key, value in exc.trailing_metadata() or ()
        if not key.startswith((":", "grpc-"))
    )


def _not_connected(exc: grpc.aio.AioRpcError) -> bool:
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = (exc.details() or "").lower()
    return any(text in details for text in _NOT_CONNECTED)


class GatewayGrpcFront:
    """Forwards ``inference.GRPCInferenceService`` calls to the services' instances."""

    def __init__(self, core: GatewayCore) -> None:
        self.core = core

    def handler(self) -> grpc.GenericRpcHandler:
        front = self

        class _Handler(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                method = details.method  # type: ignore[attr-defined]
                if not method.startswith(SERVICE_PREFIX):
                    return None
                if method == STREAM_METHOD:
                    return grpc.stream_stream_rpc_method_handler(
                        functools.partial(front.stream, method)
                    )
                return grpc.unary_unary_rpc_method_handler(functools.partial(front.unary, method))

        return _Handler()

    def _admit(self, context: grpc.aio.ServicerContext) -> tuple[ServiceState, Metadata, float]:
        token, service, forward = _split_metadata(context)
        name = service or self.core.service_for_token(token)
        state = self.core.state(name)
        route = state.route()
        check_token(route, token)
        loop = self.core.loop
        assert loop is not None
        state.limiter.admit(route.limits.rate_limit, time.perf_counter())
        return state, forward, loop.time() + route.limits.keepalive_ms / 1000.0

    # -- unary -------------------------------------------------------------------------

    async def unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        loop = self.core.loop
        assert loop is not None
        started = time.perf_counter()
        service = instance = "-"
        code = grpc.StatusCode.OK
        size_out = 0
        try:
            state, forward, when = self._admit(context)
            service = state.name
            state.in_flight += 1
            deadline = Deadline(loop, when)
            try:
                instance, response = await self._call(state, method, request, forward, deadline)
            finally:
                deadline.cancel()
                state.in_flight -= 1
            size_out = len(response)
            return response
        except GatewayError as exc:
            code = exc.grpc_code
            await context.abort(code, exc.message)
        except grpc.aio.AioRpcError as exc:  # the instance's own error, passed on
            code = exc.code()
            await context.abort(code, exc.details() or "", _trailing(exc))
        finally:
            self._log(service, method, code, started, instance, len(request), size_out)
        raise AssertionError("unreachable: context.abort() returned")  # pragma: no cover

    async def _call(
        self,
        state: ServiceState,
        method: str,
        request: bytes,
        forward: Metadata,
        deadline: Deadline,
    ) -> tuple[str, bytes]:
        core = self.core
        loop = core.loop
        assert loop is not None
        sequence = grpc_sequence(request) if method == INFER_METHOD else None

        async def send(target: Upstream) -> bytes:
            remaining = deadline.remaining(loop)
            if remaining <= 0:
                raise Expired()
            core.metrics.sent(state.name, target.instance_id)
            call = core.channel(target).unary_unary(method)
            try:
                return await call(request, metadata=forward, timeout=remaining)
            except grpc.aio.AioRpcError as exc:
                if _not_connected(exc):
                    raise ConnectFailed(exc.details() or str(exc.code())) from None
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise Expired() from None
                raise

        target, response = await core.forward(state, deadline, sequence, send)
        return target.instance_id, response

    # -- streaming ---------------------------------------------------------------------

    async def stream(
        self,
        method: str,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        loop = self.core.loop
        assert loop is not None
        started = time.perf_counter()
        service = instance = "-"
        code = grpc.StatusCode.OK
        target: Upstream | None = None
        state: ServiceState | None = None
        call = None
        try:
            state, forward, when = self._admit(context)
            service = state.name
            state.in_flight += 1
            deadline = Deadline(loop, when)  # bounds the wait for an instance only
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
            call = self.core.channel(target).stream_stream(method)(requests, metadata=forward)
            async for response in call:
                yield response
        except GatewayError as exc:
            code = exc.grpc_code
            await context.abort(code, exc.message)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if _not_connected(exc) and target is not None:
                self.core.mark_down(target)
            await context.abort(code, exc.details() or "", _trailing(exc))
        finally:
            if call is not None:
                call.cancel()
            if state is not None:
                if target is not None:
                    state.release(target)
                if service != "-":
                    state.in_flight -= 1
            self._log(service, method, code, started, instance, 0, 0)

    def _log(
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
