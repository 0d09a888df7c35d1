"""Request scanning of the gateway: sequence ids, tokens, forwarded headers."""

from __future__ import annotations

import gzip
import json

import pytest
from tritonclient.grpc import service_pb2 as pb

from openeas.gateway.core import check_token
from openeas.gateway.errors import Unauthorized
from openeas.gateway.http import _Forward
from openeas.gateway.routes import ServiceRoute, Upstream
from openeas.gateway.sequences import grpc_sequence, http_sequence


def _header(**parameters: object) -> bytes:
    doc = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}]}
    if parameters:
        doc["parameters"] = parameters
    return json.dumps(doc).encode()


def test_http_sequence_json_binary_and_compressed() -> None:
    body = _header(sequence_id=42, sequence_start=True)
    info = http_sequence(body, None, None)
    assert info is not None and (info.sequence_id, info.start, info.end) == (42, True, False)
    head = _header(sequence_id="abc", sequence_end=True)
    binary = head + b"\x00\x01sequence_id"
    info = http_sequence(binary, str(len(head)).encode(), None)
    assert info is not None and (info.sequence_id, info.end) == ("abc", True)
    info = http_sequence(gzip.compress(body), None, b"gzip")
    assert info is not None and info.sequence_id == 42
    assert http_sequence(_header(), None, None) is None
    assert http_sequence(_header(sequence_id=0), None, None) is None
    assert http_sequence(b"not json", None, None) is None
    assert http_sequence(b"garbage", None, b"gzip") is None


def test_grpc_sequence() -> None:
    request = pb.ModelInferRequest(model_name="m")
    assert grpc_sequence(request.SerializeToString()) is None
    request.parameters["sequence_id"].int64_param = 9
    request.parameters["sequence_end"].bool_param = True
    info = grpc_sequence(request.SerializeToString())
    assert info is not None and (info.sequence_id, info.start, info.end) == (9, False, True)
    request.parameters["sequence_id"].string_param = "x"
    assert grpc_sequence(request.SerializeToString()).sequence_id == "x"  # type: ignore[union-attr]


def test_check_token() -> None:
    route = ServiceRoute("svc", "s3cret")
    check_token(route, b"s3cret")
    check_token(route, "Bearer s3cret")
    for bad in (None, b"", b"s3cre", b"s3crets", b"Bearer x"):
        with pytest.raises(Unauthorized):
            check_token(route, bad)


def test_forwarded_request_drops_hop_by_hop_headers_and_token() -> None:
    scope = {
        "method": "POST",
        "query_string": b"a=1",
        "headers": [
            (b"host", b"gw"),
            (b"authorization", b"tok"),
            (b"connection", b"keep-alive, x-hop"),
            (b"x-hop", b"1"),
            (b"transfer-encoding", b"chunked"),
            (b"inference-header-content-length", b"5"),
            (b"content-type", b"application/octet-stream"),
        ],
    }
    forward = _Forward(scope, b"hello", b"v2/models/m/infer")
    assert forward.authorization == b"tok"
    data = forward.data(Upstream("i", "10.0.0.1", 8000))
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v2/models/m/infer?a=1 HTTP/1.1"
    names = [line.split(b":")[0] for line in lines[1:]]
    assert sorted(names) == sorted(
        [b"content-length", b"inference-header-content-length", b"content-type", b"host"]
    )
    assert b"host: 10.0.0.1:8000" in lines and b"content-length: 5" in lines
    assert body == b"hello"
