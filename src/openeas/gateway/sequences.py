"""Find a request's ``sequence_id`` cheaply, without decoding whole messages.

Only requests whose bytes contain the parameter's name are decoded (the JSON header of
an HTTP request, or the ModelInferRequest of a gRPC call); tensor data that happens to
contain the name only costs that one decode.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import orjson
from tritonclient.grpc import service_pb2 as pb

from openeas.protocol import compression

_HTTP_KEY = b'"sequence_id"'
_GRPC_KEY = b"sequence_id"


@dataclass(frozen=True)
class SequenceInfo:
    """The sequence parameters of one request."""

    sequence_id: Hashable
    start: bool = False
    end: bool = False


#: The sequence scan inflates at most this much of a compressed body (the scan looks for
#: ``sequence_id`` in the JSON header; a body that inflates further is left to the
#: instance, which applies its own input limit and answers 400).
SCAN_LIMIT = 16 * 1024 * 1024


def _decompress(body: bytes, encoding: bytes) -> bytes | None:
    if not compression.supported(encoding):
        return None
    try:
        return compression.inflate(body, encoding, SCAN_LIMIT)
    except (compression.DecompressionError, compression.DecompressedTooLarge):
        return None


def http_sequence(
    body: bytes, header_length: bytes | None, content_encoding: bytes | None
) -> SequenceInfo | None:
    """The sequence of an HTTP infer body (JSON or binary-tensor, compressed or not)."""
    if content_encoding is not None and content_encoding.strip().lower() != b"identity":
        plain = _decompress(body, content_encoding.strip().lower())
        if plain is None:
            return None  # the instance will report the bad body
        body = plain
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            return None
        if body.find(_HTTP_KEY, 0, length) < 0:  # no copy of the header for the scan
            return None
        head = body[:length]
    else:
        if _HTTP_KEY not in body:
            return None
        head = body
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None
    params = doc.get("parameters") if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        return None
    sequence_id = params.get("sequence_id")
    if not sequence_id or not isinstance(sequence_id, int | str):
        return None
    return SequenceInfo(
        sequence_id, bool(params.get("sequence_start")), bool(params.get("sequence_end"))
    )


def grpc_sequence(message: bytes) -> SequenceInfo | None:
    """The sequence of a serialised ``ModelInferRequest``."""
    if _GRPC_KEY not in message:
        return None
    try:
        request = pb.ModelInferRequest.FromString(message)
    except Exception:  # noqa: BLE001 - a malformed message is the instance's to report
        return None
    params = request.parameters
    if "sequence_id" not in params:
        return None
    param = params["sequence_id"]
    kind = param.WhichOneof("parameter_choice")
    sequence_id: Hashable = param.string_param if kind == "string_param" else param.int64_param
    if not sequence_id:
        return None
    start = params["sequence_start"].bool_param if "sequence_start" in params else False
    end = params["sequence_end"].bool_param if "sequence_end" in params else False
    return SequenceInfo(sequence_id, start, end)
