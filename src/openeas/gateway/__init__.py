"""The gateway: /api/predict/<service> in front of a service's instances (HTTP and gRPC)."""

from openeas.gateway.gateway import Gateway, GatewayTls
from openeas.gateway.routes import (
    GroupMember,
    GroupRoute,
    RouteTable,
    ServiceLimits,
    ServiceRoute,
    Upstream,
)

__all__ = [
    "Gateway",
    "GatewayTls",
    "GroupMember",
    "GroupRoute",
    "RouteTable",
    "ServiceLimits",
    "ServiceRoute",
    "Upstream",
]
