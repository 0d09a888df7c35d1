import json

import numpy as np
import pytest

from openeas.protocol import http_codec
from openeas.protocol.errors import InvalidArgument
from openeas.protocol.types import InferResponse, RequestedOutput, Tensor


def _binary_body(header: dict, *buffers: bytes) -> tuple[bytes, int]:
    text = json.dumps(header).encode()
    return text + b"".join(buffers), len(text)


def test_json_request_decodes_nested_data():
    body = json.dumps({
        "id": "r1",
        "inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        "parameters": {"binary_data_output": False, "custom": 3},
    }).encode()
    request = http_codec.decode_request(body, None, "m")
    assert request.id == "r1"
    np.testing.assert_array_equal(request.inputs[0].data, [[1, 2], [3, 4]])
    assert request.inputs[0].data.dtype == np.int32
    assert request.outputs == [RequestedOutput("y", True, 0, {})]
    assert request.parameters == {"custom": 3}


def test_binary_inputs_are_views_of_the_body():
    a = np.arange(4, dtype=np.float32)
    strings = np.array([b"hi", b"there"], dtype=np.object_)
    from openeas.protocol.datatypes import serialize_bytes

    s = serialize_bytes(strings)
    body, length = _binary_body(
        {"inputs": [
            {"name": "a", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}},
            {"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": len(s)}},
        ]},
        a.tobytes(), s,
    )
    request = http_codec.decode_request(body, length, "m")
    np.testing.assert_array_equal(request.inputs[0].data, a)
    assert not request.inputs[0].data.flags.owndata
    assert list(request.inputs[1].data) == [b"hi", b"there"]


@pytest.mark.parametrize(
    ("header", "extra", "message"),
    [
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 12}}]},
         b"\0" * 12, "Expected 16, got 12"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}}]},
         b"\0" * 8, "only 8 remain"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]},
         b"\0" * 8, "unexpected additional input data"),
        ({"inputs": [{"name": "a", "datatype": "FP33", "shape": [1], "data": [1]}]}, b"", "invalid datatype"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1], "data": [1]}]}, b"", "shape"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}, b"", "needs 3"),
        ({"inputs": [{"name": "a", "datatype": "FP16", "shape": [1], "data": [1]}]}, b"", "binary"),
        ({"inputs": [{"name": "a", "datatype": "INT32", "shape": [1], "data": ["x"]}]}, b"", "numbers"),
        ({"inputs": [{"name": "a", "datatype": "BOOL", "shape": [1], "data": [1]}]}, b"", "true/false"),
        ({"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": [1000]}]}, b"", "INT8"),
        ({"inputs": [{"name": "a", "datatype": "INT8", "shape": [1]}]}, b"", "neither"),
        ({"inputs": {}}, b"", "'inputs' array"),
    ],
)
def test_bad_requests_are_invalid_argument(header, extra, message):
    body, length = _binary_body(header, extra)
    with pytest.raises(InvalidArgument, match=message):
        http_codec.decode_request(body, length, "m")


def test_malformed_json_and_bad_header_length():
    with pytest.raises(InvalidArgument, match="failed to parse"):
        http_codec.decode_request(b"{not json", None, "m")
    with pytest.raises(InvalidArgument, match="larger than the request body"):
        http_codec.decode_request(b"{}", 10, "m")


def test_response_binary_and_json_outputs():
    request = http_codec.decode_request(
        json.dumps({"inputs": [], "outputs": [{"name": "b", "parameters": {"binary_data": True}},
                                              {"name": "j"}]}).encode(), None, "m")
    response = InferResponse("m", "1", "id7", [
        Tensor("b", "FP32", [2], np.array([1.5, 2.5], dtype=np.float32)),
        Tensor("j", "BYTES", [1], np.array([b"ok"], dtype=np.object_)),
    ])
    parts, length = http_codec.encode_response(response, request)
    body = b"".join(bytes(p) for p in parts)
    header = json.loads(body[:length])
    assert header["id"] == "id7"
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 8
    assert header["outputs"][1]["data"] == ["ok"]
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32), [1.5, 2.5])


def test_response_all_json_has_no_header_length():
    request = http_codec.decode_request(b'{"inputs": []}', None, "m")
    response = InferResponse("m", "1", outputs=[Tensor("o", "INT64", [2], np.array([1, 2]))])
    parts, length = http_codec.encode_response(response, request)
    assert length is None
    assert json.loads(parts[0])["outputs"][0]["data"] == [1, 2]


def test_raw_request_infers_the_variable_dim():
    data = np.arange(6, dtype=np.float32).tobytes()
    request = http_codec.raw_request(data, "m", "", "x", "FP32", [-1, 3], batched=True)
    assert request.inputs[0].shape == [1, 2, 3]
    with pytest.raises(InvalidArgument):
        http_codec.raw_request(data[:-1], "m", "", "x", "FP32", [-1, 3], batched=True)
