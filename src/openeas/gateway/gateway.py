"""The :class:`Gateway`: the HTTP and gRPC fronts over one :class:`RouteTable`."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from openeas.gateway.core import GatewayCore
from openeas.gateway.grpc import GatewayGrpcFront
from openeas.gateway.http import HttpExchange, check_head
from openeas.gateway.http1 import GatewayHttpServer
from openeas.gateway.routes import RouteTable
from openeas.transport.grpc_transport import GrpcServer
from openeas.transport.http1 import HttpLimits
from openeas.transport.sockets import bind_socket
from openeas.transport.tls import ALPN_H2, ALPN_HTTP1, server_context

log = logging.getLogger(__name__)

#: Largest request body (and gRPC message) the gateway accepts.
MAX_BODY_SIZE = 256 * 1024 * 1024


@dataclass(frozen=True)
class GatewayTls:
    """The certificate chain and private key (PEM files) both ports serve TLS with."""

    cert: str
    key: str

    def contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """The HTTP port's context (ALPN ``http/1.1``) and the gRPC port's (``h2``);
        :class:`~openeas.transport.tls.TlsFileError` when the files cannot be used."""
        return (
            server_context(self.cert, self.key, [ALPN_HTTP1]),
            server_context(self.cert, self.key, [ALPN_H2]),
        )


class Gateway:
    """``/api/predict/<service>`` on HTTP and ``inference.GRPCInferenceService`` on gRPC.

    It runs in the caller's event loop: ``await start()`` binds both ports (OSError
    naming the port when one is taken; port 0 picks a free one, see :attr:`http_port`),
    ``await stop()`` stops accepting and lets in-flight requests finish.  Services are
    read from ``routes`` per request; :attr:`registry` holds the per-service metrics.
    With ``tls`` both ports serve TLS only: HTTPS on the HTTP port, gRPC over TLS on the
    gRPC port (a certificate or key that cannot be used fails ``start()`` before
    anything is bound, with :class:`~openeas.transport.tls.TlsFileError`).
    """

    def __init__(
        self,
        routes: RouteTable,
        *,
        host: str = "0.0.0.0",
        http_port: int = 8080,
        grpc_port: int = 8081,
        http_limits: HttpLimits | None = None,
        tls: GatewayTls | None = None,
        listening: tuple[socket.socket, socket.socket] | None = None,
    ) -> None:
        self.routes = routes
        self.tls = tls
        #: already listening (HTTP, gRPC) sockets to serve instead of binding the ports:
        #: a supervisor that keeps them open across gateway restarts hands them over
        self._listening = listening
        #: What one HTTP client may make the gateway hold (header sizes, timeouts, ...).
        self.http_limits = http_limits or HttpLimits()
        self.host = host
        self._http_port = http_port
        self._grpc_port = grpc_port
        self.core = GatewayCore(routes)
        self._http: GatewayHttpServer | None = None
        self._grpc: GrpcServer | None = None

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
        http_tls, grpc_tls = self.tls.contexts() if self.tls is not None else (None, None)
        sock = self._socket(0, self._http_port)
        self.core.start()
        http = GatewayHttpServer(
            functools.partial(HttpExchange, self.core),
            sock,
            max_body_size=MAX_BODY_SIZE,
            too_large_body=lambda size: (
                b'{"error":"request body of %d bytes exceeds the gateway limit"}' % size
            ),
            limits=self.http_limits,
            head_check=functools.partial(check_head, self.core),
        )
        try:
            await http.start(http_tls)
            self._grpc = await self._start_grpc(grpc_tls)
        except BaseException:
            await http.stop(0)
            sock.close()
            await self.core.close()
            raise
        self._http = http
        log.info("gateway serving %s on %s:%d, gRPC%s on %s:%d",
                 "HTTPS" if http_tls else "HTTP", self.host, self.http_port,
                 " over TLS" if grpc_tls else "", self.host, self.grpc_port)  # fmt: skip

    def _socket(self, which: int, port: int) -> socket.socket:
        if self._listening is not None:
            return self._listening[which]
        return bind_socket(self.host, port)

    async def _start_grpc(self, tls: ssl.SSLContext | None) -> GrpcServer:
        sock = self._socket(1, self._grpc_port)
        server = GrpcServer(GatewayGrpcFront(self.core).methods(), max_message_size=MAX_BODY_SIZE)
        try:
            await server.start(sock, tls)
        except BaseException:
            sock.close()
            raise
        self._grpc_port = sock.getsockname()[1]
        return server

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting; in-flight requests get ``grace`` seconds to finish."""
        stopping = []
        if self._grpc is not None:
            grpc_server, self._grpc = self._grpc, None
            stopping.append(grpc_server.stop(grace))
        if self._http is not None:
            http, self._http = self._http, None
            self._http_port = http.port
            stopping.append(http.stop(grace))
        await asyncio.gather(*stopping)
        await self.core.close()
