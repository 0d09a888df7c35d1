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
    body = json.dumps(
        {
            "id": "r1",
            "inputs": [
                {"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            "parameters": {"binary_data_output": False, "custom": 3},
        }
    ).encode()
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
        {
            "inputs": [
                {
                    "name": "a",
                    "datatype": "FP32",
                    "shape": [4],
                    "parameters": {"binary_data_size": 16},
                },
                {
                    "name": "s",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(s)},
                },
            ]
        },
        a.tobytes(),
        s,
    )
    request = http_codec.decode_request(body, length, "m")
    np.testing.assert_array_equal(request.inputs[0].data, a)
    assert not request.inputs[0].data.flags.owndata
    assert list(request.inputs[1].data) == [b"hi", b"there"]


@pytest.mark.parametrize(
    ("header", "extra", "message"),
    [
        (
            {
                "inputs": [
                    {
                        "name": "a",
                        "datatype": "FP32",
                        "shape": [4],
                        "parameters": {"binary_data_size": 12},
                    }
                ]
            },
            b"\0" * 12,
            "Expected 16, got 12",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "a",
                        "datatype": "FP32",
                        "shape": [4],
                        "parameters": {"binary_data_size": 16},
                    }
                ]
            },
            b"\0" * 8,
            "only 8 remain",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "a",
                        "datatype": "FP32",
                        "shape": [1],
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"\0" * 8,
            "unexpected additional input data",
        ),
        (
            {"inputs": [{"name": "a", "datatype": "FP33", "shape": [1], "data": [1]}]},
            b"",
            "invalid datatype",
        ),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1], "data": [1]}]}, b"", "shape"),
        (
            {"inputs": [{"name": "a", "datatype": "FP32", "shape": [3], "data": [1, 2]}]},
            b"",
            "needs 3",
        ),
        ({"inputs": [{"name": "a", "datatype": "FP16", "shape": [1], "data": [1]}]}, b"", "binary"),
        (
            {"inputs": [{"name": "a", "datatype": "INT32", "shape": [1], "data": ["x"]}]},
            b"",
            "numbers",
        ),
        (
            {"inputs": [{"name": "a", "datatype": "BOOL", "shape": [1], "data": [1]}]},
            b"",
            "true/false",
        ),
        (
            {"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": [1000]}]},
            b"",
            "INT8",
        ),
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
        json.dumps(
            {
                "inputs": [],
                "outputs": [{"name": "b", "parameters": {"binary_data": True}}, {"name": "j"}],
            }
        ).encode(),
        None,
        "m",
    )
    response = InferResponse(
        "m",
        "1",
        "id7",
        [
            Tensor("b", "FP32", [2], np.array([1.5, 2.5], dtype=np.float32)),
            Tensor("j", "BYTES", [1], np.array([b"ok"], dtype=np.object_)),
        ],
    )
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


def _repeatable_body(values: np.ndarray, strings: bytes) -> tuple[bytes, int]:
    return _binary_body(
        {
            "id": "same",
            "inputs": [
                {"name": "a", "datatype": "FP32", "shape": [1, 4],
                 "parameters": {"binary_data_size": 16}},
                {"name": "s", "datatype": "BYTES", "shape": [1],
                 "parameters": {"binary_data_size": len(strings)}},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True, "custom": 1}}],
            "parameters": {"binary_data_output": True, "priority": 2},
        },
        values.tobytes(),
        strings,
    )  # fmt: skip


def test_a_repeated_header_decodes_the_same_into_fresh_objects():
    from openeas.protocol.datatypes import serialize_bytes

    strings = serialize_bytes(np.array([b"x"], dtype=np.object_))
    first_body, length = _repeatable_body(np.arange(4, dtype=np.float32), strings)
    second_body, _ = _repeatable_body(np.arange(4, 8, dtype=np.float32), strings)
    first = http_codec.decode_request(first_body, length, "m", "1")
    second = http_codec.decode_request(second_body, length, "m", "1")  # from the cache
    uncached = http_codec._decode(second_body, length, "m", "1")[0]
    assert second.model_name == "m" and second.model_version == "1" and second.id == "same"
    assert second.parameters == uncached.parameters == {"priority": 2}
    assert second.binary_output is True
    assert second.outputs == uncached.outputs == [RequestedOutput("y", True, 0, {"custom": 1})]
    for cached_tensor, fresh in zip(second.inputs, uncached.inputs, strict=True):
        assert (cached_tensor.name, cached_tensor.datatype, cached_tensor.shape) == (
            fresh.name,
            fresh.datatype,
            fresh.shape,
        )
        np.testing.assert_array_equal(cached_tensor.data, fresh.data)
        assert cached_tensor.data.dtype == fresh.data.dtype
    np.testing.assert_array_equal(first.inputs[0].data, [[0, 1, 2, 3]])
    np.testing.assert_array_equal(second.inputs[0].data, [[4, 5, 6, 7]])
    assert not second.inputs[0].data.flags.owndata  # still a view of the body
    # nothing is shared between two decodes: mutating one leaves the other alone
    assert second.parameters is not first.parameters
    assert second.outputs[0].parameters is not first.outputs[0].parameters
    assert second.inputs[0].shape is not first.inputs[0].shape
    second.parameters["priority"] = 9
    second.inputs[0].shape.append(1)
    third = http_codec.decode_request(first_body, length, "m", "1")
    assert third.parameters == {"priority": 2} and third.inputs[0].shape == [1, 4]


def test_a_repeated_header_with_a_wrong_body_size_fails_as_without_the_cache():
    header = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}}
        ]
    }
    good, length = _binary_body(header, b"\0" * 16)
    http_codec.decode_request(good, length, "m")
    short, _ = _binary_body(header, b"\0" * 8)
    with pytest.raises(InvalidArgument, match="only 8 remain"):
        http_codec.decode_request(short, length, "m")
    long, _ = _binary_body(header, b"\0" * 20)
    with pytest.raises(InvalidArgument, match="unexpected additional input data"):
        http_codec.decode_request(long, length, "m")


def test_small_binary_outputs_are_copied_large_ones_are_views():
    request = http_codec.decode_request(
        json.dumps({"inputs": [], "parameters": {"binary_data_output": True}}).encode(), None, "m"
    )
    small = np.arange(6, dtype=np.float32).reshape(2, 3).T  # not C-contiguous
    large = np.ones(http_codec._COPY_LIMIT // 4 + 1, dtype=np.float32)
    response = InferResponse(
        "m", "1", "", [Tensor("s", "FP32", [3, 2], small), Tensor("l", "FP32", [len(large)], large)]
    )
    parts, _ = http_codec.encode_response(response, request)
    assert bytes(parts[1]) == np.ascontiguousarray(small).tobytes()
    assert isinstance(parts[2], memoryview) and bytes(parts[2]) == large.tobytes()
