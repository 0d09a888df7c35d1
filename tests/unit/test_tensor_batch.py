"""Unit tests of the framework-agnostic request merging/splitting helpers."""

from __future__ import annotations

import time

import numpy as np
import pytest

from openeas.protocol.errors import InternalError, InvalidArgument
from openeas.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor
from openeas.server.backends.base import ExecTiming
from openeas.server.backends.tensor_batch import (
    TensorBatcher,
    as_bytes_array,
    map_shape,
)
from openeas.server.repository.config import parse_config_text

ADD_SUB = """
name: "add_sub"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] }
]
"""


def add_sub_run(calls: list[dict[str, np.ndarray]] | None = None):
    def run(inputs: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        if calls is not None:
            calls.append(dict(inputs))
        results = {
            "OUTPUT0": inputs["INPUT0"] + inputs["INPUT1"],
            "OUTPUT1": inputs["INPUT0"] - inputs["INPUT1"],
        }
        return [results[n] for n in names]

    return run


def request(batch: int | None, dims: tuple[int, ...] = (4,), outputs=None, seed: int = 0,
            datatype: str = "FP32", **kwargs) -> InferRequest:
    rng = np.random.default_rng(seed)
    shape = ((batch,) if batch is not None else ()) + dims
    a = rng.random(shape, dtype=np.float32)
    b = rng.random(shape, dtype=np.float32)
    return InferRequest(
        model_name="add_sub",
        id=f"r{seed}",
        inputs=[
            Tensor("INPUT0", datatype, list(shape), a),
            Tensor("INPUT1", datatype, list(shape), b),
        ],
        outputs=outputs,
        **kwargs,
    )


def test_single_request_is_passed_without_copies() -> None:
    batcher = TensorBatcher(parse_config_text(ADD_SUB), 3)
    req = request(2)
    calls: list[dict[str, np.ndarray]] = []
    [resp] = batcher.execute([req], add_sub_run(calls), ExecTiming())
    assert isinstance(resp, InferResponse)
    assert calls[0]["INPUT0"] is req.inputs[0].data
    assert calls[0]["INPUT1"] is req.inputs[1].data
    assert resp.model_version == "3" and resp.id == "r0" and resp.model_name == "add_sub"
    assert [t.name for t in resp.outputs] == ["OUTPUT0", "OUTPUT1"]
    out0 = resp.output("OUTPUT0")
    assert out0.shape == [2, 4] and out0.datatype == "FP32"
    np.testing.assert_allclose(out0.data, req.inputs[0].data + req.inputs[1].data)


def test_merges_requests_with_different_batch_sizes_and_splits_back() -> None:
    batcher = TensorBatcher(parse_config_text(ADD_SUB), 1)
    reqs = [request(1, seed=1), request(2, seed=2), request(3, seed=3)]
    calls: list[dict[str, np.ndarray]] = []
    timing = ExecTiming()
    results = batcher.execute(reqs, add_sub_run(calls), timing)
    assert len(calls) == 1
    assert calls[0]["INPUT0"].shape == (6, 4)
    for req, resp in zip(reqs, results, strict=True):
        assert isinstance(resp, InferResponse)
        a, b = req.inputs[0].data, req.inputs[1].data
        assert resp.output("OUTPUT0").shape == list(a.shape)
        np.testing.assert_allclose(resp.output("OUTPUT0").data, a + b)
        np.testing.assert_allclose(resp.output("OUTPUT1").data, a - b)
        assert resp.id == req.id
    assert timing.compute_input_ns > 0 and timing.compute_output_ns > 0


def test_only_requested_outputs_are_computed_and_returned() -> None:
    batcher = TensorBatcher(parse_config_text(ADD_SUB))
    seen: list[list[str]] = []

    def run(inputs, names):
        seen.append(list(names))
        return add_sub_run()(inputs, names)

    reqs = [
        request(1, outputs=[RequestedOutput("OUTPUT1")], seed=1),
        request(1, outputs=[RequestedOutput("OUTPUT1")], seed=2),
    ]
    results = batcher.execute(reqs, run, ExecTiming())
    assert seen == [["OUTPUT1"]]
    assert all([t.name for t in r.outputs] == ["OUTPUT1"] for r in results)

    seen.clear()
    reqs = [
        request(1, outputs=[RequestedOutput("OUTPUT1")], seed=1),
        request(1, outputs=[RequestedOutput("OUTPUT0")], seed=2),
    ]
    results = batcher.execute(reqs, run, ExecTiming())
    assert seen == [["OUTPUT0", "OUTPUT1"]]
    assert [t.name for t in results[0].outputs] == ["OUTPUT1"]
    assert [t.name for t in results[1].outputs] == ["OUTPUT0"]


def test_non_batching_model_runs_each_request_alone() -> None:
    config = parse_config_text(ADD_SUB.replace("max_batch_size: 8", "max_batch_size: 0"))
    batcher = TensorBatcher(config)
    reqs = [request(None, seed=i) for i in range(3)]
    calls: list[dict[str, np.ndarray]] = []
    results = batcher.execute(reqs, add_sub_run(calls), ExecTiming())
    assert len(calls) == 3
    for req, resp in zip(reqs, results, strict=True):
        assert resp.output("OUTPUT0").shape == [4]
        np.testing.assert_allclose(resp.output("OUTPUT0").data,
                                   req.inputs[0].data + req.inputs[1].data)


def test_invalid_request_fails_alone() -> None:
    batcher = TensorBatcher(parse_config_text(ADD_SUB))
    bad_type = request(1, seed=1, datatype="INT32")
    missing = request(1, seed=2)
    missing.inputs.pop()
    bad_output = request(1, seed=3, outputs=[RequestedOutput("NOPE")])
    bad_shape = request(1, dims=(5,), seed=4)
    good = request(2, seed=5)
    results = batcher.execute([bad_type, missing, bad_output, bad_shape, good],
                              add_sub_run(), ExecTiming())
    assert isinstance(results[0], InvalidArgument)
    assert "data-type is 'INT32'" in str(results[0])
    assert isinstance(results[1], InvalidArgument)
    assert "missing required input(s) ['INPUT1']" in str(results[1])
    assert isinstance(results[2], InvalidArgument)
    assert "unexpected inference output 'NOPE'" in str(results[2])
    assert isinstance(results[3], InvalidArgument)
    assert "unexpected shape for input 'INPUT0'" in str(results[3])
    assert isinstance(results[4], InferResponse)


def test_batch_size_over_max_is_rejected() -> None:
    batcher = TensorBatcher(parse_config_text(ADD_SUB))
    [result] = batcher.execute([request(9)], add_sub_run(), ExecTiming())
    assert isinstance(result, InvalidArgument)
    assert "batch-size must be <= 8" in str(result)


def test_merge_rejects_incompatible_shapes_and_execute_falls_back() -> None:
    config = parse_config_text(ADD_SUB.replace("dims: [ 4 ]", "dims: [ -1 ]"))
    batcher = TensorBatcher(config)
    reqs = [request(1, dims=(4,), seed=1), request(2, dims=(5,), seed=2)]
    with pytest.raises(InvalidArgument, match="cannot batch"):
        batcher.merge(reqs)
    calls: list[dict[str, np.ndarray]] = []
    results = batcher.execute(reqs, add_sub_run(calls), ExecTiming())
    assert len(calls) == 2
    assert results[0].output("OUTPUT0").shape == [1, 4]
    assert results[1].output("OUTPUT0").shape == [2, 5]


def test_run_failure_is_the_result_of_every_request() -> None:
    batcher = TensorBatcher(parse_config_text(ADD_SUB))

    def run(inputs, names):
        time.sleep(0.001)
        raise RuntimeError("kaboom")

    timing = ExecTiming()
    results = batcher.execute([request(1, seed=1), request(1, seed=2)], run, timing)
    assert all(isinstance(r, InternalError) and str(r) == "kaboom" for r in results)
    assert timing.compute_infer_ns >= 1_000_000

    results = batcher.execute([request(1)], run, ExecTiming(),
                              on_error=lambda exc: InvalidArgument(f"mapped: {exc}"))
    assert isinstance(results[0], InvalidArgument) and str(results[0]) == "mapped: kaboom"


def test_output_without_batch_dimension_is_an_internal_error() -> None:
    batcher = TensorBatcher(parse_config_text(ADD_SUB))

    def run(inputs, names):
        return [np.zeros((4,), np.float32) for _ in names]

    results = batcher.execute([request(1, seed=1), request(2, seed=2)], run, ExecTiming())
    assert all(isinstance(r, InternalError) for r in results)
    assert "expected a batch dimension of 3" in str(results[0])


def test_output_dtype_is_cast_to_the_config_datatype() -> None:
    batcher = TensorBatcher(parse_config_text(ADD_SUB))

    def run(inputs, names):
        return [inputs["INPUT0"].astype(np.float64) for _ in names]

    [resp] = batcher.execute([request(2)], run, ExecTiming())
    assert resp.output("OUTPUT0").data.dtype == np.float32


def test_bytes_outputs_become_object_arrays_of_bytes() -> None:
    config = parse_config_text("""
        name: "strings"
        max_batch_size: 4
        input [ { name: "IN" data_type: TYPE_STRING dims: [ 2 ] } ]
        output [ { name: "OUT" data_type: TYPE_STRING dims: [ 2 ] } ]
    """)
    batcher = TensorBatcher(config)

    def run(inputs, names):
        # Frameworks hand strings back as str.
        return [np.array([[b.decode().upper() for b in row] for row in inputs["IN"]],
                         dtype=object)]

    def make(values):
        data = np.array(values, dtype=object)
        return InferRequest("strings", inputs=[Tensor("IN", "BYTES", list(data.shape), data)])

    results = batcher.execute([make([[b"a", b"b"]]), make([[b"c", b"d"], [b"e", b"f"]])],
                              run, ExecTiming())
    assert results[0].output("OUT").datatype == "BYTES"
    assert results[0].output("OUT").data.tolist() == [[b"A", b"B"]]
    assert results[1].output("OUT").data.tolist() == [[b"C", b"D"], [b"E", b"F"]]


def test_reshape_of_inputs_and_outputs_keeps_the_batch_dimension() -> None:
    config = parse_config_text("""
        name: "reshaped"
        max_batch_size: 8
        input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
        output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
    """)
    batcher = TensorBatcher(config)
    seen: list[tuple[int, ...]] = []

    def run(inputs, names):
        seen.append(inputs["IN"].shape)
        return [inputs["IN"] * 2]

    def make(batch, seed):
        data = np.random.default_rng(seed).random((batch, 4), dtype=np.float32)
        return InferRequest("reshaped", inputs=[Tensor("IN", "FP32", [batch, 4], data)])

    reqs = [make(1, 1), make(3, 2)]
    results = batcher.execute(reqs, run, ExecTiming())
    assert seen == [(4, 2, 2)]
    for req, resp in zip(reqs, results, strict=True):
        out = resp.output("OUT")
        assert out.shape == [req.inputs[0].data.shape[0], 4]
        np.testing.assert_allclose(out.data, req.inputs[0].data * 2)


def test_reshape_maps_variable_dimensions_in_order() -> None:
    assert map_shape((3, 5, 2), (-1, 2), (1, -1, 2), batched=True) == (3, 1, 5, 2)
    assert map_shape((5, 2), (-1, 2), (1, -1, 2), batched=False) == (1, 5, 2)
    assert map_shape((2, 1), (1,), (), batched=True) == (2,)
    assert map_shape((3, 7, 4), (-1, -1), (-1, -1, 1), batched=True) == (3, 7, 4, 1)


def test_scalar_reshape_for_a_non_batching_model() -> None:
    config = parse_config_text("""
        name: "scalar"
        input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
        output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
    """)
    batcher = TensorBatcher(config, input_reshape={"IN": ()}, output_reshape={"OUT": ()})
    seen = []

    def run(inputs, names):
        seen.append(inputs["IN"].shape)
        return [inputs["IN"] + 1]

    data = np.array([41], dtype=np.int32)
    [resp] = batcher.execute([InferRequest("scalar", inputs=[Tensor("IN", "INT32", [1], data)])],
                             run, ExecTiming())
    assert seen == [()]
    assert resp.output("OUT").shape == [1] and resp.output("OUT").data.tolist() == [42]


def test_as_bytes_array() -> None:
    same = np.array([b"a", b"b"], dtype=object)
    assert as_bytes_array(same) is same
    assert as_bytes_array(np.array(["x", "y"])).tolist() == [b"x", b"y"]
    assert as_bytes_array(np.array([["x", b"y"]], dtype=object)).tolist() == [[b"x", b"y"]]
