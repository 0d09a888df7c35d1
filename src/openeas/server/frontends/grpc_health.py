"""The standard ``grpc.health.v1.Health`` service, without grpcio-health-checking.

Its two messages are tiny, so they are encoded and decoded here by hand (protobuf wire
format)::

    message HealthCheckRequest { string service = 1; }
    message HealthCheckResponse { ServingStatus status = 1; }
    enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }

The server ("") and ``inference.GRPCInferenceService`` are SERVING while the data plane
is ready and NOT_SERVING otherwise; ``Check`` of any other service fails with NOT_FOUND
and ``Watch`` reports SERVICE_UNKNOWN for it, as the health checking protocol says.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable

import grpc

from openeas.transport.grpc_call import GrpcError, Kind, Method

#: The gRPC service name of the health checking protocol.
SERVICE_NAME = "grpc.health.v1.Health"
#: The services whose health this server reports ("" is the server as a whole).
KNOWN_SERVICES = frozenset({"", "inference.GRPCInferenceService"})
#: How often ``Watch`` re-reads the status (seconds).
WATCH_INTERVAL_S = 0.5


class ServingStatus(enum.IntEnum):
    """``grpc.health.v1.HealthCheckResponse.ServingStatus``."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or oversized varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_check_request(data: bytes) -> str:
    """The ``service`` of a serialized ``HealthCheckRequest`` (unknown fields skipped)."""
    service = ""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated length-delimited field")
            if field == 1:
                service = data[pos : pos + length].decode("utf-8")
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos > len(data):
        raise ValueError("truncated message")
    return service


def encode_check_request(service: str) -> bytes:
    """A serialized ``HealthCheckRequest`` (for clients and tests)."""
    raw = service.encode("utf-8")
    return b"\x0a" + _varint(len(raw)) + raw if raw else b""


def encode_check_response(status: int) -> bytes:
    """A serialized ``HealthCheckResponse``."""
    return b"\x08" + _varint(int(status)) if status else b""


def decode_check_response(data: bytes) -> ServingStatus:
    """The ``status`` of a serialized ``HealthCheckResponse`` (for clients and tests)."""
    status = 0
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            if field == 1:
                status = value
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    try:
        return ServingStatus(status)
    except ValueError:
        return ServingStatus.UNKNOWN


class HealthServicer:
    """``Check`` and ``Watch`` over a readiness callable (the data plane's ``ready``)."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready

    def status(self, service: str) -> ServingStatus:
        """The status of ``service``; SERVICE_UNKNOWN for services this server lacks."""
        if service not in KNOWN_SERVICES:
            return ServingStatus.SERVICE_UNKNOWN
        return ServingStatus.SERVING if self._ready() else ServingStatus.NOT_SERVING

    async def Check(self, service: str) -> int:  # noqa: N802
        status = self.status(service)
        if status is ServingStatus.SERVICE_UNKNOWN:
            raise GrpcError(grpc.StatusCode.NOT_FOUND, f"unknown service '{service}'")
        return status

    async def Watch(self, service: str) -> AsyncIterator[int]:  # noqa: N802
        last: ServingStatus | None = None
        while True:
            status = self.status(service)
            if status is not last:
                yield status
                last = status
            await asyncio.sleep(WATCH_INTERVAL_S)

    def methods(self) -> dict[bytes, Method]:
        """The transport's method table for this service."""
        return {
            f"/{SERVICE_NAME}/Check".encode(): Method(
                Kind.UNARY, self.Check, decode_check_request, encode_check_response
            ),
            f"/{SERVICE_NAME}/Watch".encode(): Method(
                Kind.SERVER_STREAM, self.Watch, decode_check_request, encode_check_response
            ),
        }
