"""The gRPC call layer of the transport: methods, their kinds, and call statuses.

What a service gives :class:`~openeas.transport.grpc_transport.GrpcServer` (a
:class:`Method` per path), what its handlers raise (:class:`GrpcError`, or an
:class:`~openeas.protocol.errors.InferenceError`), and how a call's status is said on
the wire (:func:`status_of`, :func:`status_fields`).  The gateway's client to the
instances (:mod:`openeas.gateway.grpc_upstream`) speaks the same :data:`Headers` and
:class:`GrpcError`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from openeas.protocol import http2 as h2
from openeas.protocol.errors import InferenceError

log = logging.getLogger(__name__)

#: gRPC status codes, as the numbers on the wire.
OK = grpc.StatusCode.OK.value[0]
INTERNAL = grpc.StatusCode.INTERNAL.value[0]
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED.value[0]
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]

#: The headers of every answer, and the trailers of an OK one (HPACK, no table).
RESPONSE_HEADERS = h2.encode_headers([(b":status", b"200"), (b"content-type", b"application/grpc")])
TRAILERS_OK = h2.encode_header(b"grpc-status", b"0")
#: The request encodings we inflate (told to a client whose call is UNIMPLEMENTED).
ACCEPT_ENCODING = b"identity,deflate,gzip"


class Kind(enum.Enum):
    """How many messages each side of a method sends."""

    UNARY = "unary"  # one request, one response
    SERVER_STREAM = "server_stream"  # one request, a stream of responses
    BIDI_STREAM = "bidi_stream"  # streams both ways


def kind_of(rpc: Any) -> Kind:
    """The :class:`Kind` of a protobuf ``MethodDescriptor``."""
    if rpc.client_streaming:
        return Kind.BIDI_STREAM
    return Kind.SERVER_STREAM if rpc.server_streaming else Kind.UNARY


#: A call's request headers as decoded from HTTP/2: lower-case names, raw values (a
#: ``-bin`` metadata value is still base64, as on the wire).
Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC: its kind, its handler and the message codecs.

    ``handler`` is ``async (request) -> response`` for UNARY, ``(request) ->
    AsyncIterator[response]`` for SERVER_STREAM and ``(AsyncIterator[request]) ->
    AsyncIterator[response]`` for BIDI_STREAM; with ``metadata`` it also takes the
    call's request headers (:data:`Headers`, pseudo-headers included) as a second
    argument.  Handlers fail with :class:`~openeas.protocol.errors.InferenceError` (its
    ``grpc_code``) or :class:`GrpcError`; anything else is INTERNAL.

    ``admit`` (with ``metadata``) runs on the request headers as soon as they arrive,
    before any message is read: what it raises ends the call at once (a missing token
    costs no buffering), what it returns is the handler's second argument instead of
    the headers.

    ``direct`` (UNARY, with ``metadata``) is a callback fast path tried before
    ``handler``: ``direct(request, metadata, reply)`` either returns False (the call
    goes to ``handler`` as usual) or True, having taken the call: it then answers from
    callbacks through ``reply``, a :class:`~openeas.transport.grpc_handlers.UnaryReply`,
    without a coroutine, task or future per call.
    """

    kind: Kind
    handler: Callable[..., Any]
    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]
    metadata: bool = False
    admit: Callable[[Headers], Any] | None = None
    direct: Callable[[Any, Any, Any], bool] | None = None


class GrpcError(Exception):
    """A call's non-OK status, for errors that are not InferenceErrors; ``trailers``
    are extra trailing metadata fields, as on the wire (``-bin`` values base64)."""

    def __init__(
        self, code: grpc.StatusCode, message: str, trailers: Headers | tuple[()] = ()
    ) -> None:
        super().__init__(message)
        self.status = code
        self.code = code.value[0]
        self.message = message
        self.trailers = trailers


def status_of(exc: BaseException) -> tuple[int, str]:
    """The gRPC status (code, message) that ``exc`` ends a call with."""
    if isinstance(exc, InferenceError):
        return exc.grpc_code.value[0], exc.message
    if isinstance(exc, GrpcError):
        return exc.code, exc.message
    if isinstance(exc, DecodeError):
        return INTERNAL, f"failed to parse the request message: {exc}"
    log.error("unhandled error in a gRPC call", exc_info=exc)
    return INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def status_fields(code: int, message: str, extra: Headers | tuple[()] = ()) -> bytes:
    """The HPACK fields that end a call with status ``code``: ``grpc-status``,
    ``grpc-message`` and the ``extra`` trailing metadata."""
    fields = h2.encode_header(b"grpc-status", b"%d" % code)
    if message:
        fields += h2.encode_header(b"grpc-message", h2.encode_grpc_message(message))
    for name, value in extra:
        fields += h2.encode_header(name, value)
    if code == UNIMPLEMENTED:
        fields += h2.encode_header(b"grpc-accept-encoding", ACCEPT_ENCODING)
    return fields


async def _no_handler(request: Any) -> Any:  # pragma: no cover - never called
    raise AssertionError("unknown methods are answered before any handler runs")


#: The method of a call whose path names none (answered UNIMPLEMENTED at once).
NO_METHOD = Method(Kind.UNARY, _no_handler, bytes, bytes)
