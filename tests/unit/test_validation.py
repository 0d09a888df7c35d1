"""RequestValidator: the per-request checks against the model config, Triton's messages."""

from __future__ import annotations

import numpy as np
import pytest

from openeas.protocol.errors import InvalidArgument
from openeas.protocol.types import InferRequest, RequestedOutput, Tensor
from openeas.server.repository.config import parse_config_text
from openeas.server.validation import RequestValidator

BATCHED = RequestValidator(
    parse_config_text(
        'name: "m" max_batch_size: 4 '
        'input [{name: "A" data_type: TYPE_FP32 dims: [2]}, '
        '{name: "B" data_type: TYPE_FP32 dims: [-1] optional: true}, '
        '{name: "R" data_type: TYPE_FP32 dims: [4] reshape: {shape: [2, 2]} optional: true}] '
        'output [{name: "C" data_type: TYPE_FP32 dims: [2]}]'
    )
)
PLAIN = RequestValidator(
    parse_config_text(
        'name: "p" input [{name: "A" data_type: TYPE_INT32 dims: [1, -1]}] '
        'output [{name: "C" data_type: TYPE_INT32 dims: [1]}]'
    )
)


def _tensor(name: str, shape: list[int], datatype: str = "FP32") -> Tensor:
    dtype = np.float32 if datatype == "FP32" else np.int32
    return Tensor(name, datatype, shape, np.zeros(shape, dtype))


def _request(*tensors: Tensor, outputs: list[str] | None = None) -> InferRequest:
    requested = None if outputs is None else [RequestedOutput(o) for o in outputs]
    return InferRequest("m", inputs=list(tensors), outputs=requested)


def test_valid_requests_give_their_batch_size() -> None:
    assert BATCHED(_request(_tensor("A", [3, 2]), _tensor("B", [3, 7]), outputs=["C"])) == 3
    assert PLAIN(_request(_tensor("A", [1, 5], "INT32"))) == 1


@pytest.mark.parametrize("shape", [[2, 4], [2, 2, 2]])
def test_reshape_accepts_dims_or_reshape_and_gives_the_model_the_reshape(shape: list[int]) -> None:
    tensor = _tensor("R", shape)
    BATCHED(_request(_tensor("A", [2, 2]), tensor))
    assert tensor.shape == [2, 2, 2] and tensor.data.shape == (2, 2, 2)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_request(_tensor("X", [1, 2])), "unexpected inference input 'X' for model 'm'"),
        (
            _request(_tensor("A", [1, 2], "INT32")),
            "inference input 'A' data-type is 'INT32', but model 'm' expects 'FP32'",
        ),
        (_request(_tensor("A", [])), "input 'A' has no shape but model requires batch dimension"),
        (
            _request(_tensor("A", [1, 2]), _tensor("B", [2, 1])),
            "input 'B' batch size does not match other inputs for 'm'",
        ),
        (_request(_tensor("A", [5, 2])), "inference request batch-size must be <= 4 for 'm'"),
        (_request(_tensor("A", [0, 2])), "inference request batch-size must be <= 4 for 'm'"),
        (
            _request(_tensor("A", [1, 3])),
            "unexpected shape for input 'A' for model 'm'. Expected [-1,2], got [1,3]. NOTE:",
        ),
        (
            _request(_tensor("A", [1, 2]), _tensor("R", [1, 3])),
            "unexpected shape for input 'R' for model 'm'. Expected [-1,4], got [1,3].",
        ),
        (
            _request(_tensor("B", [1, 2])),
            "expected number of inputs between 1 and 3 but got 1 inputs for model 'm'. "
            "Got input(s) ['B'], but missing required input(s) ['A'].",
        ),
        (
            _request(_tensor("A", [1, 2]), outputs=["C", "D"]),
            "unexpected inference output 'D' for model 'm'",
        ),
    ],
)
def test_refusals_carry_tritons_messages(request_: InferRequest, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        BATCHED(request_)
    assert str(info.value).startswith(message), str(info.value)


def test_unbatched_shapes_are_checked_whole() -> None:
    with pytest.raises(InvalidArgument, match=r"Expected \[1,-1\], got \[2,5\]"):
        PLAIN(_request(_tensor("A", [2, 5], "INT32")))
