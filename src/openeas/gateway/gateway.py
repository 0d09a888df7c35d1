"""The :class:`Gateway`: the HTTP and gRPC fronts over one :class:`RouteTable`."""

from __future__ import annotations

import functools
import logging

import grpc
from prometheus_client import CollectorRegistry

from openeas.gateway.core import GatewayCore
from openeas.gateway.grpc import GatewayGrpcFront
from openeas.gateway.http import HttpExchange
from openeas.gateway.http1 import GatewayHttpServer
from openeas.gateway.routes import RouteTable
from openeas.server.frontends.http1 import bind_socket

log = logging.getLogger(__name__)

#: Largest request body (and gRPC message) the gateway accepts.
MAX_BODY_SIZE = 256 * 1024 * 1024


class Gateway:
    """``/api/predict/<service>`` on HTTP and ``inference.GRPCInferenceService`` on gRPC.

    It runs in the caller's event loop: ``await start()`` binds both ports (OSError
    naming the port when one is taken; port 0 picks a free one, see :attr:`http_port`),
    ``await stop()`` stops accepting and lets in-flight requests finish.  Services are
    read from ``routes`` per request; :attr:`registry` holds the per-service metrics.
    """

    def __init__(
        self,
        routes: RouteTable,
        *,
        host: str = "0.0.0.0",
        http_port: int = 8080,
        grpc_port: int = 8081,
    ) -> None:
        self.routes = routes
        self.host = host
        self._http_port = http_port
        self._grpc_port = grpc_port
        self.core = GatewayCore(routes)
        self._http: GatewayHttpServer | None = None
        self._grpc: grpc.aio.Server | None = None

    @property
    def registry(self) -> CollectorRegistry:
        """Per-service request counts, latency, in-flight and queue length."""
        return self.core.metrics.registry

    @property
    def http_port(self) -> int:
        """The HTTP port (the bound one once started)."""
        return self._http.port if self._http is not None else self._http_port

    @property
    def grpc_port(self) -> int:
        """The gRPC port (the bound one once started)."""
        return self._grpc_port

    async def start(self) -> None:
        """Bind the HTTP and gRPC ports and start serving."""
        sock = bind_socket(self.host, self._http_port)
        self.core.start()
        http = GatewayHttpServer(
            functools.partial(HttpExchange, self.core),
            sock,
            max_body_size=MAX_BODY_SIZE,
            too_large_body=lambda size: (
                b'{"error":"request body of %d bytes exceeds the gateway limit"}' % size
            ),
        )
        try:
            await http.start()
            self._grpc = await self._start_grpc()
        except BaseException:
            await http.stop(0)
            sock.close()
            await self.core.close()
            raise
        self._http = http
        log.info("gateway serving HTTP on %s:%d, gRPC on %s:%d",
                 self.host, self.http_port, self.host, self.grpc_port)  # fmt: skip

    async def _start_grpc(self) -> grpc.aio.Server:
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", MAX_BODY_SIZE),
                ("grpc.max_receive_message_length", MAX_BODY_SIZE),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers((GatewayGrpcFront(self.core).handler(),))
        host = f"[{self.host}]" if ":" in self.host else self.host
        address = f"{host}:{self._grpc_port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"failed to bind {address}: {exc}") from None
        if not port:
            raise OSError(f"failed to bind {address}: address unavailable or in use")
        await server.start()
        self._grpc_port = port
        return server

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting; in-flight requests get ``grace`` seconds to finish."""
        if self._grpc is not None:
            grpc_server, self._grpc = self._grpc, None
            stopping = grpc_server.stop(grace)
        else:
            stopping = None
        if self._http is not None:
            http, self._http = self._http, None
            self._http_port = http.port
            await http.stop(grace)
        if stopping is not None:
            await stopping
        await self.core.close()
