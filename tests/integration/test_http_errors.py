"""Bad requests over raw ``http.client``: status codes, ``{"error": ...}`` bodies, and a
server that keeps serving afterwards."""

from __future__ import annotations

import gzip
import http.client
import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from openeas.testing.onnx_models import ADD_SUB_CONFIG, write_add_sub_model, write_model_config
from tests.integration.conftest import binary_infer_body, raw_request

INFER = "/v2/models/simple/infer"
ZEROS = [0.0] * 16


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("errors-repo")
    write_add_sub_model(root / "simple" / "1", dims=(16,))
    write_model_config(root / "simple", ADD_SUB_CONFIG)
    return root


@pytest.fixture(scope="module")
def server(launch, repo):
    return launch(repo)


@pytest.fixture(scope="module")
def small_server(launch, repo):
    """A server whose requests may hold at most 4 KiB."""
    return launch(repo, "--http-max-input-size=4096")


def _json_input(name: str, shape: list[int], data, datatype: str = "FP32") -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def _json_body(*inputs: dict, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


GOOD_JSON = _json_body(_json_input("INPUT0", [1, 16], ZEROS), _json_input("INPUT1", [1, 16], ZEROS))
A = np.arange(16, dtype=np.float32).reshape(1, 16)
GOOD_BINARY, BINARY_HEADERS = binary_infer_body([("INPUT0", A, "FP32"), ("INPUT1", A, "FP32")])
BINARY_HEADER_LENGTH = int(BINARY_HEADERS["Inference-Header-Content-Length"])


def _binary_header(sizes: tuple[int, int]) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": n,
                    "datatype": "FP32",
                    "shape": [1, 16],
                    "parameters": {"binary_data_size": size},
                }
                for n, size in zip(("INPUT0", "INPUT1"), sizes, strict=True)
            ]
        }
    ).encode()


def _with_header(head: bytes, blob: bytes) -> tuple[bytes, dict[str, str]]:
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


# (id, method, path, body, headers, expected status, substring of the error message)
BAD_REQUESTS = [
    ("malformed-json", "POST", INFER, b'{"inputs": [', {}, 400, "JSON"),
    ("json-not-object", "POST", INFER, b"[1, 2, 3]", {}, 400, ""),
    ("no-inputs", "POST", INFER, b'{"outputs": []}', {}, 400, "inputs"),
    (
        "wrong-shape",
        "POST",
        INFER,
        _json_body(_json_input("INPUT0", [1, 8], ZEROS[:8]), _json_input("INPUT1", [1, 16], ZEROS)),
        {},
        400,
        "INPUT0",
    ),
    (
        "batch-too-large",
        "POST",
        INFER,
        _json_body(
            _json_input("INPUT0", [9, 16], ZEROS * 9), _json_input("INPUT1", [9, 16], ZEROS * 9)
        ),
        {},
        400,
        "batch",
    ),
    (
        "wrong-datatype",
        "POST",
        INFER,
        _json_body(
            _json_input("INPUT0", [1, 16], [0] * 16, "INT32"), _json_input("INPUT1", [1, 16], ZEROS)
        ),
        {},
        400,
        "INPUT0",
    ),
    (
        "invalid-datatype",
        "POST",
        INFER,
        _json_body(
            _json_input("INPUT0", [1, 16], ZEROS, "FLOAT"), _json_input("INPUT1", [1, 16], ZEROS)
        ),
        {},
        400,
        "INPUT0",
    ),
    (
        "unknown-input",
        "POST",
        INFER,
        _json_body(
            _json_input("INPUT0", [1, 16], ZEROS),
            _json_input("INPUT1", [1, 16], ZEROS),
            _json_input("BOGUS", [1, 16], ZEROS),
        ),
        {},
        400,
        "BOGUS",
    ),
    (
        "missing-input",
        "POST",
        INFER,
        _json_body(_json_input("INPUT0", [1, 16], ZEROS)),
        {},
        400,
        "INPUT1",
    ),
    (
        "unknown-output",
        "POST",
        INFER,
        _json_body(
            _json_input("INPUT0", [1, 16], ZEROS),
            _json_input("INPUT1", [1, 16], ZEROS),
            outputs=[{"name": "NOPE"}],
        ),
        {},
        400,
        "NOPE",
    ),
    (
        "element-count-mismatch",
        "POST",
        INFER,
        _json_body(
            _json_input("INPUT0", [1, 16], ZEROS[:15]), _json_input("INPUT1", [1, 16], ZEROS)
        ),
        {},
        400,
        "INPUT0",
    ),
    (
        "string-in-fp32-data",
        "POST",
        INFER,
        _json_body(
            _json_input("INPUT0", [1, 16], ["x"] * 16), _json_input("INPUT1", [1, 16], ZEROS)
        ),
        {},
        400,
        "INPUT0",
    ),
    (
        "negative-dim",
        "POST",
        INFER,
        _json_body(_json_input("INPUT0", [-1, 16], ZEROS), _json_input("INPUT1", [1, 16], ZEROS)),
        {},
        400,
        "shape",
    ),
    (
        "byte-count-mismatch",
        "POST",
        INFER,
        *_with_header(_binary_header((60, 64)), b"\0" * 124),
        400,
        "INPUT0",
    ),
    (
        "binary-size-past-end",
        "POST",
        INFER,
        *_with_header(_binary_header((64, 64)), b"\0" * 100),
        400,
        "INPUT1",
    ),
    (
        "unclaimed-binary-data",
        "POST",
        INFER,
        *_with_header(_binary_header((64, 64)), b"\0" * 130),
        400,
        "binary",
    ),
    (
        "header-length-past-body",
        "POST",
        INFER,
        GOOD_BINARY,
        {"Inference-Header-Content-Length": str(len(GOOD_BINARY) + 1)},
        400,
        "Inference-Header-Content-Length",
    ),
    (
        "header-length-not-integer",
        "POST",
        INFER,
        GOOD_BINARY,
        {"Inference-Header-Content-Length": "lots"},
        400,
        "Inference-Header-Content-Length",
    ),
    (
        "header-length-cuts-json",
        "POST",
        INFER,
        GOOD_BINARY,
        {"Inference-Header-Content-Length": str(BINARY_HEADER_LENGTH - 5)},
        400,
        "",
    ),
    (
        "unknown-model",
        "POST",
        "/v2/models/no_such_model/infer",
        GOOD_JSON,
        {},
        404,
        "no_such_model",
    ),
    ("unknown-version", "POST", "/v2/models/simple/versions/7/infer", GOOD_JSON, {}, 404, "simple"),
    ("unknown-path", "GET", "/v2/nothing/here", b"", {}, 404, ""),
    ("not-v2", "GET", "/v1/models/simple", b"", {}, 404, ""),
    ("get-on-infer", "GET", INFER, b"", {}, 405, ""),
    ("post-on-metadata", "POST", "/v2/models/simple", b"{}", {}, 405, ""),
    ("delete-on-server-metadata", "DELETE", "/v2", b"", {}, 405, ""),
    ("post-on-ready", "POST", "/v2/health/ready", b"", {}, 405, ""),
    (
        "unsupported-content-encoding",
        "POST",
        INFER,
        GOOD_JSON,
        {"Content-Encoding": "br"},
        501,
        "br",
    ),
]


@pytest.mark.parametrize(
    "method,path,body,headers,status,fragment",
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_request(server, method, path, body, headers, status, fragment):
    response = raw_request(server, method, path, body, headers)
    assert response.status == status, response
    message = response.error()
    assert fragment in message, message


def test_good_requests_pass(server):
    """The baselines the bad requests are variations of succeed."""
    response = raw_request(server, "POST", INFER, GOOD_JSON)
    assert response.status == 200, response
    response = raw_request(server, "POST", INFER, GOOD_BINARY, BINARY_HEADERS)
    assert response.status == 200, response


def test_tritonclient_reports_server_errors(server):
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(A)
        with pytest.raises(InferenceServerException) as info:
            client.infer("simple", [inp])
        assert info.value.status() == "400"
        assert "INPUT1" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            client.infer("no_such_model", [inp])
        assert info.value.status() == "404"
    finally:
        client.close()


def test_server_still_serves_after_bad_requests(server):
    # Every bad request again, on one keep-alive connection, then good ones on it.
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        for case_id, method, path, body, headers, status, _ in BAD_REQUESTS:
            response = raw_request(server, method, path, body, headers, conn=conn)
            assert response.status == status, (case_id, response)
        response = raw_request(server, "POST", INFER, GOOD_BINARY, BINARY_HEADERS, conn=conn)
        assert response.status == 200, response
    finally:
        conn.close()
    assert server.process.poll() is None
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.is_server_ready()
        inputs = [httpclient.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for inp in inputs:
            inp.set_data_from_numpy(A)
        result = client.infer("simple", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + A)
    finally:
        client.close()


# -- --http-max-input-size ------------------------------------------------------------


def test_body_over_max_input_size_is_400(small_server):
    big = np.zeros((8, 16), dtype=np.float32)  # 2 x 512 bytes of data: fits
    body, headers = binary_infer_body([("INPUT0", big, "FP32"), ("INPUT1", big, "FP32")])
    assert len(body) < 4096
    response = raw_request(small_server, "POST", INFER, body, headers)
    assert response.status == 200, response

    json_body = _json_body(
        _json_input("INPUT0", [8, 16], [0.12345678901234] * 128),
        _json_input("INPUT1", [8, 16], [0.12345678901234] * 128),
    )
    assert len(json_body) > 4096
    response = raw_request(small_server, "POST", INFER, json_body)
    assert response.status == 400, response
    assert "size" in response.error()

    # a small compressed body that inflates past the limit is refused too
    compressed = gzip.compress(json_body)
    assert len(compressed) < 4096
    response = raw_request(small_server, "POST", INFER, compressed, {"Content-Encoding": "gzip"})
    assert response.status == 400, response
    response.error()

    # far past the limit: still a 400 with a JSON error, and the connection stays usable
    conn = http.client.HTTPConnection("127.0.0.1", small_server.http_port, timeout=30)
    try:
        response = raw_request(small_server, "POST", INFER, json_body + b" " * (2 << 20), conn=conn)
        assert response.status == 400, response
        assert "size" in response.error()
        chunks = iter([b" " * 3000, json_body])  # chunked: no Content-Length to check first
        conn.request("POST", INFER, body=chunks, encode_chunked=True)
        chunked = conn.getresponse()
        assert chunked.status == 400
        assert "size" in json.loads(chunked.read())["error"]
        response = raw_request(small_server, "POST", INFER, body, headers, conn=conn)
        assert response.status == 200, response
    finally:
        conn.close()

    # past the limit, through tritonclient: an error, not a hang or a reset
    client = httpclient.InferenceServerClient(small_server.http_url)
    try:
        huge = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
        inputs = [httpclient.InferInput(n, [8, 16], "FP32") for n in ("INPUT0", "INPUT1")]
        for inp in inputs:
            inp.set_data_from_numpy(huge, binary_data=False)
        with pytest.raises(InferenceServerException) as info:
            client.infer("simple", inputs)
        assert info.value.status() == "400"
    finally:
        client.close()

    # and the server still serves
    response = raw_request(small_server, "POST", INFER, body, headers)
    assert response.status == 200, response
