"""Error types of the inference protocol, each mapped once to its HTTP and gRPC status.

Triton's HTTP front end maps its internal error codes to HTTP statuses as follows:
INTERNAL -> 500, NOT_FOUND -> 404, UNAVAILABLE -> 503, UNSUPPORTED -> 501 and every other
code (INVALID_ARG, ALREADY_EXISTS, CANCELLED, UNKNOWN) -> 400.  The gRPC front end maps the
same codes to the canonical gRPC status codes.  Raise the subclass that names the cause;
the front ends turn it into ``{"error": message}`` or a gRPC status.
"""

from __future__ import annotations

import grpc


class InferenceError(Exception):
    """Base of every error that the server reports to a client."""

    http_status: int = 400
    grpc_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    #: Triton's name of the code, used by the Python backend's ``TritonError``.
    triton_code: str = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(InferenceError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    triton_code = "INVALID_ARG"


class NotFound(InferenceError):
    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND
    triton_code = "NOT_FOUND"


class AlreadyExists(InferenceError):
    http_status = 400
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    triton_code = "ALREADY_EXISTS"


class Unavailable(InferenceError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE
    triton_code = "UNAVAILABLE"


class Unsupported(InferenceError):
    http_status = 501
    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    triton_code = "UNSUPPORTED"


class InternalError(InferenceError):
    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL
    triton_code = "INTERNAL"


class Cancelled(InferenceError):
    http_status = 400
    grpc_code = grpc.StatusCode.CANCELLED
    triton_code = "CANCELLED"


class ResourceExhausted(InferenceError):
    """A message or body over a configured size limit."""

    http_status = 400
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    triton_code = "INVALID_ARG"


_BY_TRITON_CODE: dict[str, type[InferenceError]] = {
    cls.triton_code: cls
    for cls in (
        InferenceError,
        InvalidArgument,
        NotFound,
        AlreadyExists,
        Unavailable,
        Unsupported,
        InternalError,
        Cancelled,
    )
}


def error_for_triton_code(code: str, message: str) -> InferenceError:
    """Build the error type that matches one of Triton's error code names."""
    return _BY_TRITON_CODE.get(code, InferenceError)(message)
