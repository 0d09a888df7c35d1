"""The control plane in one asyncio loop: REST API, route watch, reconciler, local runtime.

``serve(options)`` is what ``openeas up`` runs as its control-plane component, under the
supervisor (:mod:`openeas.platform.supervisor`) that also runs the gateway process.
SIGTERM/SIGINT stop it gracefully: the API closes and every instance is stopped, while
each service's desired state stays in the database, so the next ``openeas up`` brings
back the services that should run.  A control plane that dies without that (SIGKILL, a
crash) leaves its instances running, and the gateways keep serving them from their
routes; the next control plane (the supervisor starts one at once) re-adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import uvicorn

from openeas.gateway import GatewayTls, RouteTable
from openeas.home import openeas_home, secure_home
from openeas.platform.api import create_app
from openeas.platform.auth import load_or_create_admin_key, load_or_create_gateway_token
from openeas.platform.client import runtime_info_path
from openeas.platform.console import console_url
from openeas.platform.control import ControlPlane, Endpoints
from openeas.platform.errors import PlatformError
from openeas.platform.metrics import platform_registry
from openeas.platform.reconciler import Reconciler, Tuning
from openeas.platform.resources import local_group
from openeas.platform.routefeed import RouteFeed
from openeas.platform.runtimes.base import Runtime
from openeas.platform.runtimes.local import LocalRuntime
from openeas.platform.scaling import ScalingController
from openeas.platform.store import Store

log = logging.getLogger(__name__)


@dataclass
class PlatformOptions:
    """``openeas up``'s settings."""

    host: str = "127.0.0.1"
    api_port: int = 9090
    http_port: int = 8080
    grpc_port: int = 8081
    #: host name in the Internet endpoint (default: the bind address, or this host's name)
    public_host: str | None = None
    #: host name in the Intranet endpoint (default: the bind address, or this host's IP)
    intranet_host: str | None = None
    cpus: int | None = None
    memory_mb: int | None = None
    gpus: int | None = None
    #: the gateway's certificate and key: HTTPS and gRPC over TLS on its ports
    tls: GatewayTls | None = None
    #: where instances run: "local" (this machine) or "ray" (a Ray cluster's nodes)
    runtime: str = "local"
    ray_address: str | None = None
    tuning: Tuning = field(default_factory=Tuning)
    #: the gateway process's metrics page, added to the API's ``/metrics``
    gateway_metrics: str | None = None
    #: the API's listening socket, bound by the supervisor (None: bind host:api_port)
    api_fd: int | None = None

    def endpoints(self) -> Endpoints:
        wildcard = self.host in ("0.0.0.0", "::", "")
        public = self.public_host or (socket.gethostname() if wildcard else self.host)
        intranet = self.intranet_host or ("127.0.0.1" if wildcard else self.host)
        return Endpoints(public, intranet, self.http_port, self.grpc_port, self.tls is not None)


def running_platform() -> dict[str, Any] | None:
    """The runtime info of the platform running for this ``$OPENEAS_HOME``, if any."""
    path = runtime_info_path()
    try:
        info = json.loads(path.read_text())
        alive = psutil.Process(int(info["pid"])).status() != psutil.STATUS_ZOMBIE
    except (OSError, ValueError, KeyError, psutil.Error):
        return None
    return info if alive else None


def make_runtime(options: PlatformOptions, logs_dir: Path) -> Runtime:
    """The runtime ``openeas up --runtime`` names (the Ray one is imported only then)."""
    if options.runtime == "ray":
        from openeas.platform.runtimes.ray import RayRuntime

        return RayRuntime(options.ray_address or "", logs_dir)
    return LocalRuntime(logs_dir)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (the platform handles signals)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve_api(server: uvicorn.Server, sockets: list[socket.socket] | None) -> None:
    # uvicorn reports a port it cannot bind with sys.exit(); keep that inside this task.
    with contextlib.suppress(SystemExit):
        await server.serve(sockets)


def _check_alone(home: Any) -> None:
    """PlatformError when another platform runs for this home (its supervisor, our parent,
    is the one that is expected)."""
    other = running_platform()
    if other is not None and other["pid"] not in (os.getpid(), os.getppid()):
        raise PlatformError(f"a platform (pid {other['pid']}) is already running for {home}")


async def _wait_listening(server: uvicorn.Server, api: asyncio.Task[None], where: str) -> None:
    while not server.started:
        if api.done():
            raise PlatformError(f"the API could not listen on {where}")
        await asyncio.sleep(0.02)


async def serve(options: PlatformOptions) -> None:
    """Run the control plane until SIGTERM/SIGINT."""
    home = openeas_home()
    # Everything the platform (and its instances) creates is owner-only from here on.
    os.umask(0o077)
    for fixed in secure_home(home):
        log.warning("file permissions too open: %s", fixed)
    _check_alone(home)
    key = load_or_create_admin_key()
    store = Store(home / "platform.db")
    for repair in store.check():
        log.warning("platform.db repaired: %s", repair)
    routes = RouteTable()
    feed = RouteFeed(routes)
    group = local_group(options.cpus, options.memory_mb, options.gpus)
    runtime = make_runtime(options, home / "logs" / "instances")
    reconciler = Reconciler(store, runtime, routes, group, tuning=options.tuning, feed=feed)
    await reconciler.adopt()
    control = ControlPlane(store, reconciler, options.endpoints())
    scaling = ScalingController(store, reconciler, control.traffic)
    control.scaling = scaling
    # A request held at zero instances is news: decide now, not at the next period.
    control.traffic.on_waiting = scaling.wake
    app = create_app(
        control,
        {key.id: key},
        [platform_registry(store)],
        feed=feed,
        gateway_token=load_or_create_gateway_token(),
        scrape=[options.gateway_metrics] if options.gateway_metrics else None,
        traffic=control.traffic,
    )
    server = _Server(
        uvicorn.Config(
            app,
            host=options.host,
            port=options.api_port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
    )
    # The supervisor's socket (it keeps the port open while this process restarts).
    sockets = [socket.socket(fileno=options.api_fd)] if options.api_fd is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reconciler.start()
    scaling.start()
    api = asyncio.create_task(_serve_api(server, sockets))
    try:
        await _wait_listening(server, api, f"{options.host}:{options.api_port}")
        log.info(
            "control plane up: API on %s:%d, web console at %s",
            options.host,
            options.api_port,
            console_url(options.host, options.api_port),
        )
        stop_wait = asyncio.create_task(stop.wait())
        await asyncio.wait({api, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
    finally:
        feed.close()  # the gateways' long polls would hold the API's graceful stop
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await api
        await scaling.stop()
        await reconciler.stop_all()
        store.close()
