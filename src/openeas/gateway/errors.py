"""The gateway's own refusals, each mapped once to its EAS HTTP status and gRPC code.

Errors from an instance (the processor's own 4xx/5xx) pass through unchanged; these are
the answers the gateway gives itself, with the status codes of EAS.
"""

from __future__ import annotations

import grpc

from openeas.protocol.errors import InferenceError


class GatewayError(InferenceError):
    """Base of the gateway's refusals (``{"error": message}`` / a gRPC status)."""


class Unauthorized(GatewayError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class ServiceNotFound(GatewayError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class MethodNotAllowed(GatewayError):
    http_status = 405
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class KeepaliveExceeded(GatewayError):
    """``rpc.keepalive`` ms passed (queue wait + receive + processing)."""

    http_status = 408
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class RateLimited(GatewayError):
    """More requests than ``rpc.rate_limit`` per second."""

    http_status = 429
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class QueueFull(GatewayError):
    """More than ``rpc.max_queue_size`` requests waiting for an instance."""

    http_status = 450
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NoInstance(GatewayError):
    """No ready instance (none published, or none reachable)."""

    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class UpstreamTimeout(GatewayError):
    """The chosen instance does not answer (or dropped the request unanswered)."""

    http_status = 504
    grpc_code = grpc.StatusCode.UNAVAILABLE
