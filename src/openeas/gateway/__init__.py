"""The gateway: /api/predict/<service> in front of a service's instances (HTTP and gRPC)."""

from openeas.gateway.gateway import Gateway
from openeas.gateway.routes import RouteTable, ServiceLimits, ServiceRoute, Upstream

__all__ = ["Gateway", "RouteTable", "ServiceLimits", "ServiceRoute", "Upstream"]
