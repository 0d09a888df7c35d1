"""What the HTTP and gRPC fronts of the gateway share: service states, pools, deadlines.

:class:`GatewayCore` owns the per-service :class:`ServiceState`, the HTTP connection pool
and the gRPC client of every instance, the instances recently found unreachable, the
metrics, and the rotation of every service group over its members
(:meth:`GatewayCore.member`).  Both fronts authenticate with :func:`check_token`, bound
a request by its ``rpc.keepalive`` with a :class:`Deadline`, and tell a slow request
(408) from an instance that does not answer (504) with
:meth:`GatewayCore.instance_answers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from openeas.gateway.balancer import ServiceState
from openeas.gateway.deadline import Deadline, Expired, Timeouts
from openeas.gateway.errors import (
    GatewayError,
    KeepaliveExceeded,
    NoInstance,
    ServiceNotFound,
    Unauthorized,
    UpstreamTimeout,
)
from openeas.gateway.groups import GroupBalancer
from openeas.gateway.grpc_upstream import GrpcUpstream
from openeas.gateway.metrics import GatewayMetrics
from openeas.gateway.routes import GroupRoute, RouteTable, ServiceRoute, Upstream
from openeas.gateway.sequences import SequenceInfo
from openeas.gateway.upstream import ConnectFailed, InstancePool

T = TypeVar("T")

log = logging.getLogger(__name__)

#: An instance refusing connections is skipped for this long before it is tried again.
DOWN_FOR_S = 2.0
#: How long a liveness probe may take before the instance counts as not answering.
PROBE_TIMEOUT_S = 1.0
#: How often stale sequences, down marks, pools and gRPC clients are cleaned up.
HOUSEKEEPING_S = 0.25
_PROBE = b"GET /v2/health/live HTTP/1.1\r\nhost: gateway\r\ncontent-length: 0\r\n\r\n"


#: Tokens as bytes, encoded once rather than per request.
_encoded = functools.lru_cache(maxsize=4096)(str.encode)


def check_token(route: ServiceRoute | GroupRoute, presented: bytes | str | None) -> None:
    """Raise Unauthorized unless ``presented`` (an Authorization value) is the token of
    the service (or service group)."""
    if not presented:
        raise Unauthorized(f"{_kind(route)} needs its token in the Authorization header")
    if isinstance(presented, str):
        presented = presented.encode()
    if presented[:7].lower() == b"bearer ":
        presented = presented[7:]
    if not hmac.compare_digest(presented.strip(), _encoded(route.token)):
        raise Unauthorized(f"invalid token for {_kind(route)}")


def _kind(route: ServiceRoute | GroupRoute) -> str:
    """``service 'NAME'`` or ``service group 'NAME'``, for messages."""
    if isinstance(route, GroupRoute):
        return f"service group '{route.name}'"
    return f"service '{route.name}'"


class GatewayCore:
    """Shared state of the gateway's fronts (one per :class:`~openeas.gateway.Gateway`)."""

    def __init__(self, routes: RouteTable) -> None:
        self.routes = routes
        self.states: dict[str, ServiceState] = {}
        self.down: dict[str, float] = {}
        self.metrics = GatewayMetrics(lambda: self.states.values())
        self.groups = GroupBalancer()
        #: by (host, port, internal token): a new instance on a reused port is a new pool
        self._pools: dict[tuple[str, int, str | None], InstancePool] = {}
        self._grpc: dict[tuple[str, int | None, str | None], GrpcUpstream] = {}
        self._probes: dict[str, asyncio.Future[bool]] = {}
        self._housekeeping: asyncio.Task[None] | None = None
        self._wake_pending = False
        #: called with a service's name when a request starts waiting for a held route
        #: without instances (see :class:`ServiceState`); the traffic reporter sets it
        self.on_hold: Callable[[str], None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Keepalive deadlines of the HTTP requests handled in callbacks.
        self.timeouts: Timeouts

    # -- lookups -----------------------------------------------------------------------

    def state(self, name: str) -> ServiceState:
        """The state of a published service; ServiceNotFound otherwise."""
        state = self.states.get(name)
        if state is None:
            if self.routes.get(name) is None:
                raise ServiceNotFound(f"service '{name}' does not exist")
            state = self.states[name] = ServiceState(name, self.routes, self.down, self._held)
        return state

    def target(self, name: str) -> ServiceState | GroupRoute:
        """What a request to ``name`` addresses: a service's state (one dict lookup for a
        service that has had a request) or a service group (see :meth:`member`).
        ServiceNotFound for a name that is neither."""
        state = self.states.get(name)
        if state is None:
            group = self.group(name)
            if group is not None:
                return group
            state = self.state(name)
        return state

    def group(self, name: str) -> GroupRoute | None:
        """The service group of this name (None when it is a service's, or unknown)."""
        return self.routes.group(name) if self.routes.get(name) is None else None

    def member(
        self, group: GroupRoute, authorization: bytes | str | None
    ) -> tuple[ServiceState, ServiceRoute]:
        """The member service that serves this request to ``group`` (with the group's
        token: a member's own is Unauthorized), its state and route: the request is then
        served, limited and counted as one to that service.  Each call takes the group's
        next turn (once per request).  NoInstance when no member takes group traffic."""
        check_token(group, authorization)  # before choosing: a refusal takes no turn
        member = self.groups.choose(group)
        if member is None:
            raise NoInstance(
                f"service group '{group.name}' has no member service that takes its "
                "traffic (every member is standalone or has weight 0)"
            )
        try:
            state = self.state(member)
            return state, state.route()
        except ServiceNotFound:  # the control plane removes it from the group next
            raise NoInstance(
                f"member service '{member}' of service group '{group.name}' does not exist"
            ) from None

    def resolve(
        self, name: str, authorization: bytes | str | None
    ) -> tuple[ServiceState, ServiceRoute]:
        """The state and route that serve a request to ``name`` (a service, or a group's
        chosen member) once its token is checked (see :meth:`target`, :meth:`member`)."""
        target = self.target(name)
        if isinstance(target, GroupRoute):
            return self.member(target, authorization)
        route = target.route()
        check_token(route, authorization)
        return target, route

    def _held(self, name: str) -> None:
        if self.on_hold is not None:
            self.on_hold(name)

    def service_for_token(self, token: bytes | str | None) -> str:
        """The one service or service group whose token this is (gRPC calls without
        ``x-eas-service``)."""
        if not token:
            raise Unauthorized("missing authorization metadata (the service token)")
        matches = []
        candidates: list[ServiceRoute | GroupRoute] = [*self.routes.services()]
        candidates.extend(self.routes.groups())
        for route in candidates:
            try:
                check_token(route, token)
            except Unauthorized:
                continue
            matches.append(route.name)
        if len(matches) != 1:
            if not matches:
                raise Unauthorized("invalid token: it belongs to no service")
            raise ServiceNotFound(
                "the token belongs to several services: name one in the x-eas-service metadata"
            )
        return matches[0]

    def pool(self, upstream: Upstream) -> InstancePool:
        key = (upstream.host, upstream.http_port, upstream.token)
        pool = self._pools.get(key)
        if pool is None:
            assert self.loop is not None, "GatewayCore.start() not called"
            pool = self._pools[key] = InstancePool(
                upstream.host,
                upstream.http_port,
                self.loop,
                upstream.unix_socket,
                token=upstream.token,
            )
        return pool

    def grpc(self, upstream: Upstream) -> GrpcUpstream:
        """The gRPC client of an instance (NoInstance when it serves no gRPC)."""
        if upstream.grpc_port is None:
            raise NoInstance(f"instance '{upstream.instance_id}' serves no gRPC")
        key = (upstream.host, upstream.grpc_port, upstream.token)
        client = self._grpc.get(key)
        if client is None:
            assert self.loop is not None, "GatewayCore.start() not called"
            client = self._grpc[key] = GrpcUpstream(
                upstream.host, upstream.grpc_port, self.loop, upstream.token, upstream.unix_socket
            )
        return client

    def mark_down(self, upstream: Upstream) -> None:
        """Skip an instance that refused a connection for a little while."""
        self.down[upstream.instance_id] = time.monotonic() + DOWN_FOR_S

    # -- 408 or 504 --------------------------------------------------------------------

    async def forward(
        self,
        state: ServiceState,
        deadline: Deadline,
        sequence: SequenceInfo | None,
        send: Callable[[Upstream], Awaitable[T]],
        chosen: Upstream | None = None,
    ) -> tuple[Upstream, T]:
        """``send`` the request to an instance of ``state``; the instance and the answer.

        A request of a known sequence goes to the instance holding it; otherwise the
        balancer chooses, unless the caller has (``chosen``, its slot already acquired).
        ``send`` raises :class:`ConnectFailed` when the request never reached the
        instance (it is marked down and another one is tried) and :class:`Expired` when
        the keepalive passed (408 or 504, see :meth:`expired_error`).
        """
        upstream = chosen
        if sequence is not None and upstream is None:
            upstream = state.sequence_upstream(state.route(), sequence.sequence_id)
        tried: list[str] = []
        while True:
            target = upstream or await self._choose(state, deadline, tried)
            upstream = None
            if target is not chosen:
                state.routes.acquire(target.instance_id)
            chosen = None
            try:
                answer = await send(target)
            except ConnectFailed:
                self.mark_down(target)
                tried.append(target.instance_id)
                continue
            except Expired:
                raise await self.expired_error(state, target) from None
            finally:
                state.release(target)
            if sequence is not None:
                if sequence.end:
                    state.end_sequence(sequence.sequence_id)
                else:
                    state.bind_sequence(sequence.sequence_id, target)
            return target, answer

    async def _choose(self, state: ServiceState, deadline: Deadline, tried: list[str]) -> Upstream:
        """An instance from the service's queue; 408 when the keepalive passes there."""
        try:
            return await state.choose(deadline, tried)
        except Expired:
            raise self.queue_expired(state) from None

    def queue_expired(self, state: ServiceState) -> KeepaliveExceeded:
        """The 408 of a request whose keepalive passed before an instance came free."""
        route = state.routes.get(state.name)
        keepalive = route.limits.keepalive_ms if route else "?"
        return KeepaliveExceeded(
            f"request to service '{state.name}' exceeded rpc.keepalive ({keepalive} ms) "
            "waiting for a free instance"
        )

    async def expired_error(self, state: ServiceState, upstream: Upstream) -> GatewayError:
        """408 when the instance is alive (the request was just slow), else 504."""
        if await self.instance_answers(upstream):
            route = state.routes.get(state.name)
            keepalive = route.limits.keepalive_ms if route else "?"
            return KeepaliveExceeded(
                f"request to service '{state.name}' exceeded rpc.keepalive ({keepalive} ms)"
            )
        return UpstreamTimeout(
            f"instance {upstream.instance_id} of service '{state.name}' does not answer"
        )

    async def instance_answers(self, upstream: Upstream) -> bool:
        """Whether the instance answers a liveness probe (shared by concurrent callers)."""
        probe = self._probes.get(upstream.instance_id)
        if probe is None:
            assert self.loop is not None
            probe = self.loop.create_task(self._probe(upstream))
            self._probes[upstream.instance_id] = probe
            probe.add_done_callback(lambda _: self._probes.pop(upstream.instance_id, None))
        return await asyncio.shield(probe)

    async def _probe(self, upstream: Upstream) -> bool:
        assert self.loop is not None
        deadline = Deadline(self.loop, self.loop.time() + PROBE_TIMEOUT_S)
        try:
            response = await self.pool(upstream).request(_PROBE, deadline)
        except (Expired, ConnectionError):
            return False
        finally:
            deadline.cancel()
        return response.status < 500

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeouts = Timeouts(self.loop)
        self.routes.listeners.append(self._routes_changed)
        self._housekeeping = self.loop.create_task(self._housekeep())

    async def close(self) -> None:
        with contextlib.suppress(ValueError):  # the table may outlive this gateway
            self.routes.listeners.remove(self._routes_changed)
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            try:
                await self._housekeeping
            except asyncio.CancelledError:
                pass
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        for client in self._grpc.values():
            client.close()
        self._grpc.clear()

    def _routes_changed(self) -> None:
        """Instances may have come or gone: let every waiting request look again, once
        the current batch of route updates is applied (a snapshot updates many)."""
        if self.loop is not None and not self._wake_pending:
            self._wake_pending = True
            # thread-safe: a test or an embedding program may write the table elsewhere
            self.loop.call_soon_threadsafe(self._wake_waiters)

    def _wake_waiters(self) -> None:
        self._wake_pending = False
        for state in self.states.values():
            if state.waiters:
                state.wake_all()

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                await self._tidy()
            except Exception:  # pragma: no cover - keep the gateway running
                log.exception("gateway housekeeping failed")

    async def _tidy(self) -> None:
        now = time.monotonic()
        for instance_id in [i for i, until in self.down.items() if until <= now]:
            del self.down[instance_id]
        for name, state in list(self.states.items()):
            state.expire_sequences(now)
            if self.routes.get(name) is None and not state.in_flight:
                del self.states[name]
        self.groups.forget_except(group.name for group in self.routes.groups())
        self._close_idle_clients()

    def _close_idle_clients(self) -> None:
        """Close the pools and gRPC clients of instances that are gone and idle."""
        http_live: set[tuple[str, int, str | None]] = set()
        grpc_live: set[tuple[str, int | None, str | None]] = set()
        for route in self.routes.services():
            for upstream in (*route.upstreams, *route.draining):
                http_live.add((upstream.host, upstream.http_port, upstream.token))
                grpc_live.add((upstream.host, upstream.grpc_port, upstream.token))
        for key in [k for k, p in self._pools.items() if k not in http_live and p.idle()]:
            self._pools.pop(key).close()
        for gone in [k for k, c in self._grpc.items() if k not in grpc_live and c.idle()]:
            self._grpc.pop(gone).close()
