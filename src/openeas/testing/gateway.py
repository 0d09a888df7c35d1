"""Run a :class:`~openeas.gateway.Gateway` in a background thread, for tests and benchmarks.

The gateway gets its own (uvloop) event loop in a daemon thread; the route table lives
on that loop too, so the test thread changes it only through :meth:`GatewayThread.call`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from prometheus_client import generate_latest

from openeas.gateway import Gateway, GatewayTls, RouteTable, ServiceLimits, ServiceRoute, Upstream
from openeas.testing.server import ServerProcess
from openeas.transport.http1 import HttpLimits

_T = TypeVar("_T")


def upstream_of(
    server: ServerProcess, instance_id: str, unix_socket: str | None = None
) -> Upstream:
    """The route-table entry of a test server process (``unix_socket``: the server's
    ``--http-unix-socket``, which the gateway then prefers, as for platform instances)."""
    return Upstream(instance_id, "127.0.0.1", server.http_port, server.grpc_port, unix_socket)


class GatewayThread:
    """A started gateway on free ports (``with GatewayThread() as gw: ...``)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        http_limits: HttpLimits | None = None,
        tls: GatewayTls | None = None,
    ) -> None:
        self.routes = RouteTable()
        self._tls = tls
        self._http_limits = http_limits
        self._host = host
        self._ports = (http_port, grpc_port)
        self.gateway: Gateway | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> GatewayThread:
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._main, args=(started,), name="gateway", daemon=True
        )
        self._thread.start()
        started.result(timeout)
        return self

    def _main(self, started: concurrent.futures.Future[None]) -> None:
        import uvloop

        loop = uvloop.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(started))
        finally:
            loop.close()

    async def _serve(self, started: concurrent.futures.Future[None]) -> None:
        self._stopped = asyncio.Event()
        http_port, grpc_port = self._ports
        gateway = Gateway(
            self.routes,
            host=self._host,
            http_port=http_port,
            grpc_port=grpc_port,
            http_limits=self._http_limits,
            tls=self._tls,
        )
        try:
            await gateway.start()
        except BaseException as exc:
            started.set_exception(exc)
            return
        self.gateway = gateway
        started.set_result(None)
        await self._stopped.wait()

    def stop(self, grace: float = 10.0) -> None:
        """Stop the gateway (in-flight requests get ``grace`` seconds) and its thread."""
        if self.gateway is None or self.loop is None or self._stopped is None:
            return
        self.run(self.gateway.stop(grace), timeout=grace + 10)
        self.loop.call_soon_threadsafe(self._stopped.set)
        assert self._thread is not None
        self._thread.join(10)
        self.gateway = None

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- talking to the loop -----------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        """Run a coroutine on the gateway's loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Call ``fn(*args)`` on the gateway's loop (route changes, reading state)."""

        async def _call() -> _T:
            return fn(*args)

        return self.run(_call())

    def publish(
        self,
        name: str,
        token: str,
        upstreams: Iterable[Upstream] = (),
        draining: Iterable[Upstream] = (),
        limits: ServiceLimits | None = None,
        hold: bool = False,
    ) -> ServiceRoute:
        """Publish (or replace) a service's route (``hold``: requests wait for a first
        instance rather than a 503)."""
        route = ServiceRoute(
            name, token, limits or ServiceLimits(), tuple(upstreams), tuple(draining), hold
        )
        self.call(self.routes.update, route)
        return route

    def in_flight(self, instance_id: str) -> int:
        return self.call(self.routes.in_flight, instance_id)

    def waiting(self, service: str) -> int:
        """Requests waiting in the service's queue."""
        assert self.gateway is not None
        core = self.gateway.core
        return self.call(lambda: len(s.waiters) if (s := core.states.get(service)) else 0)

    def upstream_connections(self, upstream: Upstream) -> int:
        """How many HTTP connections the gateway holds open to ``upstream``."""
        assert self.gateway is not None
        return self.call(lambda: self.gateway.core.pool(upstream).connections())  # type: ignore[union-attr]

    def metrics_text(self) -> str:
        """The gateway's registry in Prometheus text format."""
        assert self.gateway is not None
        return self.call(lambda: generate_latest(self.gateway.registry).decode())  # type: ignore[union-attr]

    # -- addresses ---------------------------------------------------------------------

    @property
    def http_port(self) -> int:
        assert self.gateway is not None
        return self.gateway.http_port

    @property
    def grpc_port(self) -> int:
        assert self.gateway is not None
        return self.gateway.grpc_port

    def http_url(self, service: str) -> str:
        """The tritonclient HTTP url of a service: ``127.0.0.1:PORT/api/predict/<name>``
        (with TLS, tritonclient's ``ssl=True`` makes it HTTPS)."""
        return f"127.0.0.1:{self.http_port}/api/predict/{service}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"
