"""Per-service admission and instance choice: rate limit, queue, least outstanding, sequences.

One :class:`ServiceState` per service lives as long as the gateway.  It reads the
service's current :class:`~openeas.gateway.routes.ServiceRoute` on every decision (the
control plane may change it at any time) and counts per-instance load in the
:class:`~openeas.gateway.routes.RouteTable` (``acquire``/``release``), where the control
plane sees it while draining.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Collection, Hashable

from openeas.gateway.deadline import Deadline
from openeas.gateway.errors import NoInstance, QueueFull, RateLimited, ServiceNotFound
from openeas.gateway.routes import RouteTable, ServiceRoute, Upstream

#: A sequence not seen for this long is forgotten (its next request may go elsewhere).
SEQUENCE_IDLE_S = 60.0


class RateLimiter:
    """A token bucket: ``rate`` requests per second, bursts of up to one second's worth."""

    __slots__ = ("_tokens", "_stamp", "_rate")

    def __init__(self) -> None:
        self._tokens = 0.0
        self._stamp = 0.0
        self._rate: float | None = None

    def admit(self, rate: float | None, now: float) -> None:
        """Take a token or raise RateLimited (``rate`` None: unlimited)."""
        if rate is None:
            return
        capacity = max(rate, 1.0)
        if rate != self._rate:  # first use or a changed limit: start with a full bucket
            self._rate = rate
            self._tokens = capacity
        else:
            self._tokens = min(capacity, self._tokens + (now - self._stamp) * rate)
        self._stamp = now
        if self._tokens < 1.0:
            raise RateLimited(f"rate limit of {rate:g} requests per second exceeded")
        self._tokens -= 1.0


class ServiceState:
    """The gateway's live state for one service."""

    def __init__(
        self,
        name: str,
        routes: RouteTable,
        down: dict[str, float],
        on_hold: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        #: told the service's name when a request starts waiting for an instance of a
        #: held route that has none (the gateway reports it to the control plane at once)
        self.on_hold = on_hold
        self.routes = routes
        #: instance id -> until when (monotonic) it is skipped: it refused a connection
        self.down = down
        self.limiter = RateLimiter()
        #: Requests waiting for a free instance, oldest first.
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        #: Requests accepted and not yet answered (queued ones included).
        self.in_flight = 0
        #: sequence id -> [instance id, last use (monotonic)]
        self.sequences: dict[Hashable, list[object]] = {}
        self._turn = 0

    # -- choosing an instance ----------------------------------------------------------

    def route(self) -> ServiceRoute:
        route = self.routes.get(self.name)
        if route is None:
            raise ServiceNotFound(f"service '{self.name}' does not exist")
        return route

    def pick(self, route: ServiceRoute, exclude: Collection[str] = ()) -> Upstream | None:
        """The ready instance with the fewest outstanding requests under the service's
        per-instance limit (ties taken in turn), or None when all are busy."""
        upstreams = route.upstreams
        count = len(upstreams)
        best: Upstream | None = None
        best_load = route.limits.max_concurrency
        in_flight = self.routes.in_flight
        start = self._turn
        self._turn = start + 1
        for i in range(count):
            upstream = upstreams[(start + i) % count]
            load = in_flight(upstream.instance_id)
            if load < best_load and upstream.instance_id not in exclude:
                best, best_load = upstream, load
        return best

    def pick_ready(self, route: ServiceRoute) -> Upstream | None:
        """:meth:`choose` without waiting: an instance with a free slot now, or None when
        the request has to queue (others wait already, or every instance is busy).

        NoInstance when the service has no ready instance (and its route does not hold
        requests) or every one is marked down.
        """
        exclude = self._with_down(()) if self.down else ()
        if self.waiters or not self._available(route, exclude):
            return None
        return self.pick(route, exclude)

    async def choose(self, deadline: Deadline, exclude: Collection[str] = ()) -> Upstream:
        """An instance for the next request; waits in the service's queue when all are busy
        (or, on a ``hold`` route, while there is none).

        ServiceNotFound when the service is gone, NoInstance when it has no ready instance
        (other than ``exclude``) and its route does not hold requests, QueueFull when
        ``max_queue_size`` requests already wait.  Expired when ``deadline`` passes while
        waiting.
        """
        exclude = self._with_down(exclude)
        route = self.route()
        if self._available(route, exclude) and not self.waiters:
            upstream = self.pick(route, exclude)
            if upstream is not None:
                return upstream
        return await self._queue(route, deadline, exclude)

    def _with_down(self, exclude: Collection[str]) -> Collection[str]:
        """``exclude`` and the instances marked down now."""
        if not self.down:
            return exclude
        now = time.monotonic()
        return {*exclude, *(i for i, until in self.down.items() if until > now)}

    async def _queue(
        self, route: ServiceRoute, deadline: Deadline, exclude: Collection[str]
    ) -> Upstream:
        """Wait in the service's queue for an instance with a free slot."""
        if len(self.waiters) >= route.limits.max_queue_size:
            raise QueueFull(
                f"service '{self.name}' has {len(self.waiters)} requests waiting "
                f"(rpc.max_queue_size is {route.limits.max_queue_size})"
            )
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        if not route.upstreams and self.on_hold is not None:
            self.on_hold(self.name)
        try:
            while True:
                await deadline.wait(waiter)
                route = self.route()
                if self._available(route, exclude):
                    upstream = self.pick(route, exclude)
                    if upstream is not None:
                        return upstream
                waiter = asyncio.get_running_loop().create_future()
                self.waiters.appendleft(waiter)  # keep this request's place
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.wake()  # this request was woken but will not use the slot
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
            try:
                self.waiters.remove(waiter)
            except ValueError:
                pass

    def _available(self, route: ServiceRoute, exclude: Collection[str]) -> bool:
        """Whether the route has an instance to try; False when the request has to wait
        for a first one (a ``hold`` route without any); NoInstance otherwise."""
        if not route.upstreams:
            if route.hold:
                return False
            raise NoInstance(f"service '{self.name}' has no ready instance")
        if exclude and all(u.instance_id in exclude for u in route.upstreams):
            raise NoInstance(f"no instance of service '{self.name}' could be reached")
        return True

    def wake(self) -> None:
        """Let the oldest waiting request try again (an instance slot came free)."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        """Let every waiting request try again (the service's instances changed)."""
        for _ in range(len(self.waiters)):
            self.wake()

    def release(self, upstream: Upstream) -> None:
        """A request sent to ``upstream`` finished."""
        self.routes.release(upstream.instance_id)
        if self.waiters:
            self.wake()

    # -- sequences ---------------------------------------------------------------------

    def sequence_upstream(self, route: ServiceRoute, sequence_id: Hashable) -> Upstream | None:
        """The instance holding a sequence, when it still exists (draining ones too: a
        sequence in progress finishes where its state is)."""
        entry = self.sequences.get(sequence_id)
        if entry is None:
            return None
        instance_id = entry[0]
        for upstream in (*route.upstreams, *route.draining):
            if upstream.instance_id == instance_id:
                entry[1] = time.monotonic()
                return upstream
        del self.sequences[sequence_id]
        return None

    def bind_sequence(self, sequence_id: Hashable, upstream: Upstream) -> None:
        self.sequences[sequence_id] = [upstream.instance_id, time.monotonic()]

    def end_sequence(self, sequence_id: Hashable) -> None:
        self.sequences.pop(sequence_id, None)

    def expire_sequences(self, now: float, idle_s: float = SEQUENCE_IDLE_S) -> None:
        stale = [key for key, (_, last) in self.sequences.items() if now - last > idle_s]  # type: ignore[operator]
        for key in stale:
            del self.sequences[key]
