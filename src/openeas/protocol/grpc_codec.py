"""Triton's gRPC inference messages <-> the in-memory request and response types.

Requests carry tensor data either in ``raw_input_contents`` (one buffer per input, in
input order: the little-endian element bytes, or length-prefixed elements for BYTES) or
in each input's typed ``contents``; fixed-size raw inputs become zero-copy numpy views of
their buffers.  Responses always use ``raw_output_contents``, as Triton does.  Parameters
are ``InferParameter`` oneofs on the wire and plain Python values in memory.

Inputs in system shared memory (``shared_memory_region`` parameter) take no raw input
contents: they get an empty placeholder and keep their ``shared_memory_*`` parameters for
the data plane.  Outputs that the data plane wrote into shared memory keep their place in
``raw_output_contents`` with an empty entry, as Triton does, so that the entries stay
aligned with ``outputs`` (clients index them by position).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from openeas.protocol import datatypes
from openeas.protocol.errors import InvalidArgument
from openeas.protocol.http_codec import SHM_PLACEHOLDER, SHM_REGION, uses_shared_memory
from openeas.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor

#: Triton datatype -> (the ``InferTensorContents`` field that carries it, that field's dtype).
_CONTENTS_FIELD: dict[str, tuple[str, np.dtype]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(np.object_)),
}

_CONTENTS_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1


# -- parameters ----------------------------------------------------------------------------


def parameter_value(param: Any) -> Any:
    """The Python value of an ``InferParameter`` (or ``ModelRepositoryParameter``)."""
    kind = param.WhichOneof("parameter_choice")
    if kind is None:
        raise InvalidArgument("parameter has no value set")
    return getattr(param, kind)


def decode_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as a dict of Python values."""
    if not params:
        return {}
    out: dict[str, Any] = {}
    for key, param in params.items():
        try:
            out[key] = parameter_value(param)
        except InvalidArgument:
            raise InvalidArgument(f"parameter '{key}' has no value set") from None
    return out


def encode_parameter(param: pb.InferParameter, value: Any) -> None:
    """Store a Python value in an ``InferParameter`` (bool, int, float or str)."""
    if isinstance(value, bool | np.bool_):
        param.bool_param = bool(value)
    elif isinstance(value, int | np.integer):
        number = int(value)
        if _INT64_MIN <= number <= _INT64_MAX:
            param.int64_param = number
        elif 0 <= number <= _UINT64_MAX:
            param.uint64_param = number
        else:
            param.string_param = str(number)
    elif isinstance(value, float | np.floating):
        param.double_param = float(value)
    elif isinstance(value, bytes | bytearray):
        param.string_param = bytes(value).decode("utf-8", "replace")
    else:
        param.string_param = value if isinstance(value, str) else str(value)


def encode_parameters(target: Any, values: Mapping[str, Any]) -> None:
    """Fill a protobuf ``map<string, InferParameter>`` from a dict of Python values."""
    for key, value in values.items():
        if value is None:
            continue
        encode_parameter(target[key], value)


# -- requests ------------------------------------------------------------------------------


def decode_request(msg: pb.ModelInferRequest) -> InferRequest:
    """Decode a ``ModelInferRequest``; InvalidArgument when it is malformed."""
    model = msg.model_name
    raw = msg.raw_input_contents
    n_raw = len(raw)
    inputs: list[Tensor] = []
    raw_index = 0
    for spec in msg.inputs:
        name = spec.name
        datatype = spec.datatype
        if not datatypes.is_valid(datatype):
            raise InvalidArgument(
                f"invalid datatype '{datatype}' of input '{name}' for model '{model}'"
            )
        shape = list(spec.shape)
        if any(d < 0 for d in shape):
            raise InvalidArgument(
                f"input '{name}' for model '{model}' has a negative dimension in shape {shape}"
            )
        params = decode_parameters(spec.parameters)
        if params and uses_shared_memory(params, name):
            if spec.HasField("contents"):
                raise InvalidArgument(
                    f"unexpected 'content' provided when using shared memory for input tensor "
                    f"'{name}' for model '{model}'"
                )
            inputs.append(Tensor(name, datatype, shape, SHM_PLACEHOLDER, params))
            continue
        count = datatypes.element_count(shape)
        if spec.HasField("contents"):
            if n_raw:
                raise InvalidArgument(
                    f"contents field must not be specified when using raw_input_contents for "
                    f"'{name}' for model '{model}'"
                )
            data = _from_contents(name, datatype, shape, count, spec.contents)
        else:
            if raw_index >= n_raw:
                raise InvalidArgument(
                    f"expecting {len(msg.inputs)} inputs, got {n_raw} raw input contents for "
                    f"model '{model}'"
                )
            data = datatypes.array_from_buffer(
                datatype, shape, raw[raw_index], f"input '{name}' for model '{model}'"
            )
            raw_index += 1
        inputs.append(Tensor(name, datatype, shape, data, params))
    if raw_index != n_raw:
        raise InvalidArgument(
            f"expected {len(msg.inputs)} inputs but got {n_raw} raw input contents in "
            f"'ModelInferRequest' for model '{model}'"
        )

    outputs: list[RequestedOutput] | None = None
    if msg.outputs:
        outputs = [_decode_output(o) for o in msg.outputs]
    params = decode_parameters(msg.parameters)
    params.pop("binary_data_output", None)  # an HTTP notion; gRPC outputs are always raw
    return InferRequest(
        model_name=model,
        model_version=msg.model_version,
        id=msg.id,
        inputs=inputs,
        outputs=outputs,
        parameters=params,
        binary_output=True,
    )


def _from_contents(
    name: str, datatype: str, shape: list[int], count: int, contents: pb.InferTensorContents
) -> np.ndarray:
    entry = _CONTENTS_FIELD.get(datatype)
    if entry is None:
        raise InvalidArgument(
            f"input '{name}': datatype {datatype} cannot be sent in typed 'contents'; use "
            "raw_input_contents"
        )
    field, source_dtype = entry
    for other in _CONTENTS_FIELDS:
        if other != field and len(getattr(contents, other)):
            raise InvalidArgument(
                f"input '{name}' of datatype {datatype} must carry its data in '{field}', "
                f"not '{other}'"
            )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidArgument(
            f"unexpected number of elements in '{field}' for input '{name}': shape {shape} "
            f"needs {count}, got {len(values)}"
        )
    if datatype == "BYTES":
        return datatypes.to_bytes_array(values).reshape(shape)
    array = np.array(values, dtype=source_dtype)
    target = datatypes.to_numpy_dtype(datatype)
    if target != source_dtype:
        narrowed = array.astype(target)
        if not np.array_equal(narrowed, array):
            raise InvalidArgument(
                f"input '{name}': a value in '{field}' is out of range for {datatype}"
            )
        array = narrowed
    return array.reshape(shape)


def _decode_output(spec: pb.ModelInferRequest.InferRequestedOutputTensor) -> RequestedOutput:
    params = decode_parameters(spec.parameters)
    params.pop("binary_data", None)
    classification = params.pop("classification", 0)
    if (
        not isinstance(classification, int)
        or isinstance(classification, bool)
        or classification < 0
    ):
        raise InvalidArgument(f"output '{spec.name}': 'classification' must be an integer")
    if params and uses_shared_memory(params, spec.name) and classification:
        raise InvalidArgument("output can't set both 'shared_memory_region' and 'classification'")
    return RequestedOutput(spec.name, None, classification, params)


# -- responses -----------------------------------------------------------------------------


def _raw_bytes(tensor: Tensor) -> bytes:
    if tensor.data is SHM_PLACEHOLDER:
        return b""  # in shared memory: an empty entry keeps the others aligned
    if tensor.datatype == "BYTES":
        return datatypes.serialize_bytes(tensor.data)
    return np.ascontiguousarray(tensor.data).tobytes()


def encode_response(
    response: InferResponse, request: InferRequest | None = None
) -> pb.ModelInferResponse:
    """Encode a response; every output's data goes in ``raw_output_contents``."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id or (request.id if request is not None else ""),
        raw_output_contents=[_raw_bytes(t) for t in response.outputs],
    )
    if response.parameters:
        encode_parameters(msg.parameters, response.parameters)
    for tensor in response.outputs:
        out = msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.parameters:
            encode_parameters(out.parameters, tensor.parameters)
    return msg


def encode_request(request: InferRequest) -> pb.ModelInferRequest:
    """Encode an in-memory request as a ``ModelInferRequest`` with raw input contents.

    The inverse of :func:`decode_request`; useful for clients and tests.
    """
    msg = pb.ModelInferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        raw_input_contents=[
            _raw_bytes(t) for t in request.inputs if SHM_REGION not in t.parameters
        ],
    )
    encode_parameters(msg.parameters, request.parameters)
    for tensor in request.inputs:
        spec = msg.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        encode_parameters(spec.parameters, tensor.parameters)
    for output in request.outputs or ():
        spec = msg.outputs.add(name=output.name)
        encode_parameters(spec.parameters, output.parameters)
        if output.classification:
            spec.parameters["classification"].int64_param = output.classification
    return msg
