"""A gateway process (``openeas gateway``): a :class:`Gateway` whose routes follow the
control plane's REST API (:mod:`openeas.gateway.follower`) and which reports its traffic
there (:mod:`openeas.gateway.reporter`).

At start it loads the saved snapshot, so it serves at once even while the control plane
is down; without one it waits (a bounded time) for the API's first snapshot before it
accepts connections, so that it never answers 404 for a service that exists.  Clients
that connect meanwhile wait in the listening socket's backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from openeas.gateway.follower import RouteFollower
from openeas.gateway.gateway import Gateway, GatewayTls
from openeas.gateway.reporter import TrafficReporter
from openeas.gateway.routes import RouteTable

log = logging.getLogger("openeas.gateway")

#: Seconds a gateway without a saved snapshot waits for the API before serving anyway.
FIRST_SNAPSHOT_WAIT = 10.0


@dataclass
class GatewayOptions:
    api: str
    token: str
    snapshot: Path
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    #: inherited listening sockets' file descriptors (HTTP, gRPC), from a supervisor
    fds: tuple[int, int] | None = None
    #: Prometheus metrics of this gateway on their own port (None: not served)
    metrics_port: int | None = None
    #: an inherited listening socket for the metrics instead of ``metrics_port``
    metrics_fd: int | None = None
    gateway_id: str | None = None
    stop_grace: float = 30.0
    #: gateway processes serving the same ports (this is one of them)
    workers: int = 1
    #: certificate and key: HTTPS and gRPC over TLS on the ports
    tls: GatewayTls | None = None


def _listening(fds: tuple[int, int] | None) -> tuple[socket.socket, socket.socket] | None:
    if fds is None:
        return None
    http, grpc = (socket.socket(fileno=fd) for fd in fds)
    for sock in (http, grpc):
        sock.setblocking(False)
    return http, grpc


def serve_metrics(gateway: Gateway, sock: socket.socket) -> None:
    """The gateway's Prometheus metrics on the listening ``sock``, answered by a thread
    (never on the event loop that forwards requests)."""
    from http.server import ThreadingHTTPServer

    from prometheus_client.exposition import MetricsHandler

    sock.setblocking(True)
    server = ThreadingHTTPServer(
        sock.getsockname()[:2], MetricsHandler.factory(gateway.registry), bind_and_activate=False
    )
    server.socket.close()
    server.socket = sock
    threading.Thread(target=server.serve_forever, name="gateway-metrics", daemon=True).start()
    log.info("gateway metrics on %s:%d", *sock.getsockname()[:2])


async def run_gateway(options: GatewayOptions) -> None:
    """Serve until SIGTERM/SIGINT, then let in-flight requests finish."""
    routes = RouteTable()
    follower = RouteFollower(
        routes,
        options.api,
        options.token,
        options.snapshot,
        gateway_id=options.gateway_id,
        workers=options.workers,
    )
    if not follower.load():  # no saved routes: the API's first snapshot, then serve
        follower.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follower.loaded.wait(), FIRST_SNAPSHOT_WAIT)
    gateway = Gateway(
        routes,
        host=options.host,
        http_port=options.http_port,
        grpc_port=options.grpc_port,
        listening=_listening(options.fds),
        tls=options.tls,
    )
    reporter = TrafficReporter(gateway.core, follower.api, options.token, follower.gateway_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gateway.start()
        follower.start()  # after the saved routes are served: a restart is back at once
        reporter.start()
        if options.metrics_fd is not None:
            serve_metrics(gateway, socket.socket(fileno=options.metrics_fd))
        elif options.metrics_port is not None:
            serve_metrics(gateway, socket.create_server((options.host, options.metrics_port)))
        log.info("gateway following %s (routes version %s)", follower.api, follower.version)
        await stop.wait()
    finally:
        await reporter.stop()
        await follower.stop()
        await gateway.stop(options.stop_grace)
