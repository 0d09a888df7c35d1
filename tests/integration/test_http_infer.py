"""Inference over HTTP with the real ``tritonclient.http`` clients (sync and aio).

JSON and binary tensors, every datatype, BYTES, raw binary bodies, request ids and
parameters, classification, compression, statistics and dynamic batching, all against
one ONNX-only server.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from openeas.testing.onnx_models import (
    write_add_sub_model,
    write_identity_model,
    write_model_config,
)
from tests.integration.conftest import (
    REPO_ROOT,
    RawResponse,
    binary_infer_body,
    raw_request,
    split_binary_response,
)

DATATYPES = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64",
]
LABELS = ["alpha", "bravo", "charlie", "delta", "echo"]


def _add_sub_config(name: str, extra: str = "") -> str:
    return f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }},
  {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }},
  {{ name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }}
]
{extra}
"""


def _identity_config(datatype: str, dims: str, max_batch: int = 0, extra: str = "") -> str:
    config_type = "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
    return f"""
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
input [ {{ name: "INPUT0" data_type: {config_type} dims: {dims} }} ]
output [ {{ name: "OUTPUT0" data_type: {config_type} dims: {dims} {extra} }} ]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("infer-repo")
    for name, extra in (
        ("simple", ""),
        ("stats_model", ""),
        ("batched", "dynamic_batching { max_queue_delay_microseconds: 20000 }"),
    ):
        write_add_sub_model(root / name / "1", dims=(16,))
        write_model_config(root / name, _add_sub_config(name, extra))
    for datatype in [*DATATYPES, "BYTES"]:
        name = f"id_{datatype.lower()}"
        write_identity_model(root / name / "1", datatype, (-1, -1))
        write_model_config(root / name, _identity_config(datatype, "[ -1, -1 ]"))
    write_identity_model(root / "raw_single" / "1", "FP32", (4,))
    write_model_config(root / "raw_single", _identity_config("FP32", "[ 4 ]"))
    write_identity_model(root / "raw_batched" / "1", "INT32", (-1, 3))
    write_model_config(root / "raw_batched", _identity_config("INT32", "[ 3 ]", max_batch=4))
    write_identity_model(root / "classifier" / "1", "FP32", (-1, 5))
    write_model_config(
        root / "classifier",
        _identity_config("FP32", "[ 5 ]", max_batch=4, extra='label_filename: "labels.txt"'),
    )
    (root / "classifier" / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return root


@pytest.fixture(scope="module")
def server(launch, repo):
    return launch(repo)


def _inputs(a: np.ndarray, b: np.ndarray, binary: tuple[bool, bool] = (True, True)):
    in0 = httpclient.InferInput("INPUT0", list(a.shape), "FP32")
    in0.set_data_from_numpy(a, binary_data=binary[0])
    in1 = httpclient.InferInput("INPUT1", list(b.shape), "FP32")
    in1.set_data_from_numpy(b, binary_data=binary[1])
    return [in0, in1]


def _text(value: bytes | str) -> str:
    """A BYTES element: tritonclient gives bytes for binary outputs, str for JSON ones."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _operands(batch: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((batch, 16)).astype(np.float32)
    b = rng.standard_normal((batch, 16)).astype(np.float32)
    return a, b


# -- JSON and binary tensors ----------------------------------------------------------


def test_binary_inputs_and_outputs(client):
    a, b = _operands(batch=3)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=True),
    ]
    result = client.infer("simple", _inputs(a, b), outputs=outputs)
    response = result.get_response()
    assert response["model_name"] == "simple"
    assert response["model_version"] == "1"
    for output in response["outputs"]:
        assert "data" not in output
        assert output["parameters"]["binary_data_size"] == 3 * 16 * 4
        assert output["shape"] == [3, 16]
        assert output["datatype"] == "FP32"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_json_inputs_and_outputs(client):
    a, b = _operands(batch=2, seed=1)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=False),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    result = client.infer("simple", _inputs(a, b, (False, False)), outputs=outputs)
    response = result.get_response()
    for output in response["outputs"]:
        assert "binary_data_size" not in output.get("parameters", {})
        assert len(output["data"]) == 2 * 16
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_mixed_json_and_binary(client):
    a, b = _operands(seed=2)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=False),
    ]
    result = client.infer("simple", _inputs(a, b, (True, False)), outputs=outputs)
    by_name = {o["name"]: o for o in result.get_response()["outputs"]}
    assert by_name["OUTPUT0"]["parameters"]["binary_data_size"] == 64
    assert "data" not in by_name["OUTPUT0"]
    assert "data" in by_name["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_outputs_subset(client):
    a, b = _operands(seed=3)
    result = client.infer(
        "simple", _inputs(a, b), outputs=[httpclient.InferRequestedOutput("OUTPUT1")]
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_all_outputs_json_by_default_without_outputs(server):
    # No 'outputs' and no binary_data_output: Triton returns every output as JSON.
    a, b = _operands(seed=4)
    body = {
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": a.ravel().tolist()},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": b.ravel().tolist()},
        ]
    }
    response = raw_request(server, "POST", "/v2/models/simple/infer", json.dumps(body))
    assert response.status == 200, response
    assert "inference-header-content-length" not in response.headers
    doc = response.json()
    by_name = {o["name"]: o for o in doc["outputs"]}
    assert set(by_name) == {"OUTPUT0", "OUTPUT1"}
    np.testing.assert_array_equal(np.array(by_name["OUTPUT0"]["data"], np.float32), (a + b)[0])


def test_binary_data_output_request_parameter(server):
    a, b = _operands(seed=5)
    body, headers = binary_infer_body(
        [("INPUT0", a, "FP32"), ("INPUT1", b, "FP32")],
        parameters={"binary_data_output": True},
    )
    response = raw_request(server, "POST", "/v2/models/simple/infer", body, headers)
    assert response.status == 200, response
    assert response.headers["content-type"] == "application/octet-stream"
    doc, blobs = split_binary_response(response)
    assert set(blobs) == {"OUTPUT0", "OUTPUT1"}
    np.testing.assert_array_equal(np.frombuffer(blobs["OUTPUT1"], np.float32), (a - b)[0])


def test_chunked_request_body(server):
    a, b = _operands(seed=6)
    body, headers = binary_infer_body(
        [("INPUT0", a, "FP32"), ("INPUT1", b, "FP32")],
        outputs=[{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        pieces = iter([body[:7], body[7:100], body[100:]])
        conn.request("POST", "/v2/models/simple/infer", body=pieces, headers=headers,
                     encode_chunked=True)
        response = conn.getresponse()
        raw = RawResponse(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        conn.close()
    assert raw.status == 200, raw
    doc, blobs = split_binary_response(raw)
    assert [o["name"] for o in doc["outputs"]] == ["OUTPUT0"]
    np.testing.assert_array_equal(np.frombuffer(blobs["OUTPUT0"], np.float32), (a + b)[0])


# -- datatypes ------------------------------------------------------------------------


def _sample(datatype: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    if datatype == "BOOL":
        return rng.integers(0, 2, (2, 3)).astype(bool)
    if datatype == "UINT64":
        return np.array([[0, 1, 2**63 + 5], [2**64 - 1, 12345, 7]], dtype=np.uint64)
    if datatype == "INT64":
        return np.array([[-(2**63), -1, 0], [1, 2**62 + 3, 2**63 - 1]], dtype=np.int64)
    if datatype == "INT8":
        return np.array([[-128, -1, 0], [1, 100, 127]], dtype=np.int8)
    if datatype == "FP64":
        return np.array([[0.1, -2.5e300, 1e-310], [np.pi, -0.0, 123456789.123456789]])
    if datatype in ("FP16", "FP32"):
        dtype = np.float16 if datatype == "FP16" else np.float32
        return (rng.standard_normal((2, 3)) * 100).astype(dtype)
    dtype = np.dtype(datatype.lower())
    info = np.iinfo(dtype)
    return np.array([[info.min, 0, 1], [info.max, info.max // 3, 2]], dtype=dtype)


@pytest.mark.parametrize(
    "datatype,binary",
    # FP16 travels only as binary data (see test_fp16_json_is_rejected)
    [(dt, binary) for dt in DATATYPES for binary in (True, False) if binary or dt != "FP16"],
    ids=lambda v: {True: "binary", False: "json"}.get(v, v) if isinstance(v, bool) else v,
)
def test_datatype_round_trip(client, datatype, binary):
    data = _sample(datatype)
    inp = httpclient.InferInput("INPUT0", list(data.shape), datatype)
    inp.set_data_from_numpy(data, binary_data=binary)
    result = client.infer(
        f"id_{datatype.lower()}",
        [inp],
        outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)],
    )
    output = result.get_response()["outputs"][0]
    assert output["datatype"] == datatype
    assert output["shape"] == [2, 3]
    assert ("data" in output) == (not binary)
    got = result.as_numpy("OUTPUT0")
    assert got.dtype == data.dtype
    np.testing.assert_array_equal(got, data)


def test_fp16_json_is_rejected(client, server):
    data = np.ones((2, 3), dtype=np.float16)
    inp = httpclient.InferInput("INPUT0", [2, 3], "FP16")
    inp.set_data_from_numpy(data, binary_data=False)
    with pytest.raises(InferenceServerException) as info:
        client.infer("id_fp16", [inp])
    assert info.value.status() == "400"
    assert "FP16" in info.value.message()
    # ... and so is asking for an FP16 output as JSON
    inp.set_data_from_numpy(data, binary_data=True)
    with pytest.raises(InferenceServerException) as info:
        client.infer(
            "id_fp16", [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT0", False)]
        )
    assert info.value.status() == "400"
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP16", "shape": [1, 1], "data": [1.0]}]}
    response = raw_request(server, "POST", "/v2/models/id_fp16/infer", json.dumps(body))
    assert response.status == 400
    assert "FP16" in response.error()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_round_trip(client, binary):
    values = ["hello", "", "héllo wörld", "日本語", "x" * 1000, "a,b;c"]
    data = np.array(values, dtype=np.object_).reshape(2, 3)
    inp = httpclient.InferInput("INPUT0", [2, 3], "BYTES")
    inp.set_data_from_numpy(data, binary_data=binary)
    result = client.infer(
        "id_bytes", [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary)]
    )
    output = result.get_response()["outputs"][0]
    assert output["datatype"] == "BYTES"
    assert output["shape"] == [2, 3]
    if not binary:
        assert output["data"] == values
    got = result.as_numpy("OUTPUT0")
    assert [_text(v) for v in got.ravel()] == values


# -- raw binary body -------------------------------------------------------------------


def test_raw_binary_body_single_input(server):
    data = np.array([1.5, -2.0, 3.25, 4.0], dtype=np.float32)
    headers = {"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"}
    response = raw_request(server, "POST", "/v2/models/raw_single/infer", data.tobytes(), headers)
    assert response.status == 200, response
    doc, blobs = split_binary_response(response)
    assert doc["model_name"] == "raw_single"
    assert doc["outputs"][0]["shape"] == [4]
    np.testing.assert_array_equal(np.frombuffer(blobs["OUTPUT0"], np.float32), data)


def test_raw_binary_body_batching_model(server):
    data = np.array([7, -8, 9], dtype=np.int32)
    headers = {"Inference-Header-Content-Length": "0"}
    response = raw_request(server, "POST", "/v2/models/raw_batched/infer", data.tobytes(), headers)
    assert response.status == 200, response
    doc, blobs = split_binary_response(response)
    assert doc["outputs"][0]["shape"] == [1, 3]
    np.testing.assert_array_equal(np.frombuffer(blobs["OUTPUT0"], np.int32), data)


def test_raw_binary_body_errors(server):
    headers = {"Inference-Header-Content-Length": "0"}
    # wrong size for a fixed-shape input
    response = raw_request(server, "POST", "/v2/models/raw_single/infer", b"\0" * 12, headers)
    assert response.status == 400, response
    response.error()
    # not a whole number of elements
    response = raw_request(server, "POST", "/v2/models/raw_single/infer", b"\0" * 15, headers)
    assert response.status == 400, response
    # a model with two inputs cannot take a raw body
    response = raw_request(server, "POST", "/v2/models/simple/infer", b"\0" * 64, headers)
    assert response.status == 400, response
    assert "one input" in response.error()


# -- request id and parameters ----------------------------------------------------------


def test_request_id_is_echoed(client):
    a, b = _operands()
    result = client.infer("simple", _inputs(a, b), request_id="req-42/ü")
    assert result.get_response()["id"] == "req-42/ü"
    result = client.infer("simple", _inputs(a, b))
    assert "id" not in result.get_response()


def test_request_parameters_are_accepted(client, server):
    a, b = _operands()
    result = client.infer(
        "simple", _inputs(a, b), parameters={"custom": "value", "number": 3, "flag": True}
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    # 'parameters' must be an object
    body = {
        "parameters": ["not", "an", "object"],
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16},
            {"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16},
        ],
    }
    response = raw_request(server, "POST", "/v2/models/simple/infer", json.dumps(body))
    assert response.status == 400, response
    assert "parameters" in response.error()


# -- classification -------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_with_labels(client, binary):
    scores = np.array(
        [[0.1, 0.7, 0.2, 0.9, 0.0], [0.5, 0.25, 0.125, 0.0, 1.0]], dtype=np.float32
    )
    inp = httpclient.InferInput("INPUT0", [2, 5], "FP32")
    inp.set_data_from_numpy(scores)
    result = client.infer(
        "classifier",
        [inp],
        outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary, class_count=2)],
    )
    output = result.get_response()["outputs"][0]
    assert output["datatype"] == "BYTES"
    assert output["shape"] == [2, 2]
    got = [[_text(v) for v in row] for row in result.as_numpy("OUTPUT0")]
    assert got == [
        ["0.900000:3:delta", "0.700000:1:bravo"],
        ["1.000000:4:echo", "0.500000:0:alpha"],
    ]


def test_classification_without_class_count_returns_scores(client):
    scores = np.array([[0.1, 0.7, 0.2, 0.9, 0.0]], dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", [1, 5], "FP32")
    inp.set_data_from_numpy(scores)
    result = client.infer("classifier", [inp])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), scores)


# -- compression ----------------------------------------------------------------------


@pytest.mark.parametrize("request_alg", [None, "gzip", "deflate"])
@pytest.mark.parametrize("response_alg", [None, "gzip", "deflate"])
def test_compression(client, request_alg, response_alg):
    a, b = _operands(batch=4, seed=8)
    result = client.infer(
        "simple",
        _inputs(a, b),
        request_compression_algorithm=request_alg,
        response_compression_algorithm=response_alg,
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_response_is_compressed_on_the_wire(server, algorithm):
    a, b = _operands(seed=9)
    body, headers = binary_infer_body([("INPUT0", a, "FP32"), ("INPUT1", b, "FP32")])
    headers["Accept-Encoding"] = algorithm
    response = raw_request(server, "POST", "/v2/models/simple/infer", body, headers)
    assert response.status == 200, response
    assert response.headers.get("content-encoding") == algorithm
    plain = gzip.decompress(response.body) if algorithm == "gzip" else zlib.decompress(response.body)
    doc = json.loads(plain)  # all outputs JSON: no binary_data_output asked for
    assert {o["name"] for o in doc["outputs"]} == {"OUTPUT0", "OUTPUT1"}


def test_bad_compressed_body_is_400(server):
    headers = {"Content-Encoding": "gzip"}
    response = raw_request(server, "POST", "/v2/models/simple/infer", b"not gzip at all", headers)
    assert response.status == 400, response
    response.error()


# -- asyncio client -------------------------------------------------------------------


async def test_aio_client(server):
    async with aiohttpclient.InferenceServerClient(server.http_url) as client:
        assert await client.is_server_live()
        assert await client.is_model_ready("simple")
        metadata = await client.get_model_metadata("simple")
        assert metadata["inputs"][0]["shape"] == [-1, 16]

        async def one(seed: int) -> None:
            a, b = _operands(seed=seed)
            in0 = aiohttpclient.InferInput("INPUT0", [1, 16], "FP32")
            in0.set_data_from_numpy(a)
            in1 = aiohttpclient.InferInput("INPUT1", [1, 16], "FP32")
            in1.set_data_from_numpy(b, binary_data=False)
            result = await client.infer(
                "simple",
                [in0, in1],
                request_id=f"aio-{seed}",
                outputs=[aiohttpclient.InferRequestedOutput("OUTPUT0")],
                response_compression_algorithm="gzip" if seed % 2 else None,
            )
            assert result.get_response()["id"] == f"aio-{seed}"
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)

        await asyncio.gather(*(one(seed) for seed in range(8)))


# -- statistics -----------------------------------------------------------------------


def _model_stats(client, model: str) -> dict:
    stats = client.get_inference_statistics(model)["model_stats"]
    assert len(stats) == 1
    return stats[0]


def test_statistics(client):
    before = _model_stats(client, "stats_model")
    assert before["inference_count"] == 0 and before["execution_count"] == 0
    assert before["inference_stats"]["success"]["count"] == 0
    for seed in range(5):
        a, b = _operands(seed=seed)
        client.infer("stats_model", _inputs(a, b))
    stats = _model_stats(client, "stats_model")
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 5
    assert stats["inference_count"] == 5
    assert stats["execution_count"] == 5
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[key]["count"] == 5, key
        assert inference[key]["ns"] > 0, key
    assert inference["fail"]["count"] == 0
    assert stats["last_inference"] > 0

    # one request of batch size 3: three inferences, one execution
    a, b = _operands(batch=3)
    client.infer("stats_model", _inputs(a, b))
    stats = _model_stats(client, "stats_model")
    assert stats["inference_count"] == 8
    assert stats["execution_count"] == 6
    batch_stats = {entry["batch_size"]: entry for entry in stats["batch_stats"]}
    assert set(batch_stats) == {1, 3}
    assert batch_stats[1]["compute_infer"]["count"] == 5
    assert batch_stats[3]["compute_infer"]["count"] == 1
    assert batch_stats[3]["compute_infer"]["ns"] > 0

    # a rejected request counts as a failure, not as an inference
    bad = httpclient.InferInput("INPUT0", [1, 15], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 15), np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("stats_model", [bad, _inputs(a[:1, :], b[:1, :])[1]])
    stats = _model_stats(client, "stats_model")
    assert stats["inference_stats"]["fail"]["count"] == 1
    assert stats["inference_stats"]["success"]["count"] == 6
    assert stats["inference_count"] == 8


def test_statistics_of_all_models(client):
    names = {s["name"] for s in client.get_inference_statistics()["model_stats"]}
    assert {"simple", "stats_model", "classifier", "id_bytes"} <= names


# -- dynamic batching -----------------------------------------------------------------


async def test_dynamic_batching_forms_batches(server):
    requests = 16
    async with aiohttpclient.InferenceServerClient(server.http_url) as client:

        async def one(seed: int) -> None:
            a, b = _operands(seed=100 + seed)
            in0 = aiohttpclient.InferInput("INPUT0", [1, 16], "FP32")
            in0.set_data_from_numpy(a)
            in1 = aiohttpclient.InferInput("INPUT1", [1, 16], "FP32")
            in1.set_data_from_numpy(b)
            result = await client.infer("batched", [in0, in1])
            # every request gets its own slice of the batch back
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)

        await asyncio.gather(*(one(seed) for seed in range(requests)))
        stats = (await client.get_inference_statistics("batched"))["model_stats"][0]
    assert stats["inference_count"] == requests
    assert stats["inference_stats"]["success"]["count"] == requests
    assert stats["execution_count"] < requests, stats
    assert max(entry["batch_size"] for entry in stats["batch_stats"]) > 1, stats["batch_stats"]
    assert all(entry["batch_size"] <= 8 for entry in stats["batch_stats"])


# -- a client script in the style of the user's document ----------------------------


CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys
    import time

    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=sys.argv[1])
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.float32)
    inputs = [httpclient.InferInput("INPUT0", [1, 16], "FP32"),
              httpclient.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_data_from_numpy(a, binary_data=True)
    inputs[1].set_data_from_numpy(b, binary_data=True)
    output = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
    for i in range(10):
        start = time.time()
        results = client.infer("simple", inputs=inputs, outputs=[output])
        elapsed_ms = (time.time() - start) * 1000
        assert np.array_equal(results.as_numpy("OUTPUT0"), a + b), "wrong result"
        print(f"[{i}] rt(ms): {elapsed_ms:.2f}")
    """
)


def test_user_style_client_script(server, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script), server.http_url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 10
    for i, line in enumerate(lines):
        assert line.startswith(f"[{i}] rt(ms): ")
        assert float(line.split(": ")[1]) > 0


EXAMPLE_CLIENT = REPO_ROOT / "examples" / "client.py"
EXAMPLE_MODEL = REPO_ROOT / "examples" / "models" / "add_sub_onnx"


@pytest.mark.skipif(
    not (EXAMPLE_CLIENT.exists() and (EXAMPLE_MODEL / "1" / "model.onnx").exists()),
    reason="examples/client.py or examples/models/add_sub_onnx is missing",
)
def test_example_client_script(launch, tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE_MODEL, repo / "add_sub_onnx")
    example_server = launch(repo)
    run = subprocess.run(
        [sys.executable, str(EXAMPLE_CLIENT), "--url", example_server.http_url,
         "--model", "add_sub_onnx"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "model name:  add_sub_onnx" in run.stdout
    assert sum(1 for line in run.stdout.splitlines() if "rt(ms)" in line) == 10
