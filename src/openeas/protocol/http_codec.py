"""The HTTP/REST v2 inference body: JSON tensors and the binary tensor data extension.

Request: a JSON header, optionally followed by binary tensor buffers when the
``Inference-Header-Content-Length`` header gives the JSON's length; inputs with
``parameters.binary_data_size`` take their data from those buffers, in input order.
Response: outputs are binary when their ``parameters.binary_data`` (or the request's
``binary_data_output``) says so; their buffers follow the JSON in output order.
Binary inputs become zero-copy numpy views of the request body.

Tensors in system shared memory (``parameters.shared_memory_region``) carry no data here:
inputs get an empty placeholder and keep their ``shared_memory_*`` parameters, which the
data plane resolves; outputs that the data plane wrote into shared memory are encoded
with those parameters and without data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from openeas.protocol import datatypes
from openeas.protocol.errors import InvalidArgument
from openeas.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor

SHM_REGION = "shared_memory_region"
_SHM_ORPHANS = ("shared_memory_offset", "shared_memory_byte_size")
#: The data of an input that lives in shared memory, until the data plane reads it, and of
#: an output the data plane wrote into shared memory (the codecs encode no data for it).
SHM_PLACEHOLDER = np.empty(0, dtype=np.uint8)
SHM_PLACEHOLDER.flags.writeable = False


def parse_json(data: bytes | memoryview, what: str = "request") -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"failed to parse the {what} JSON buffer: {exc}") from None


#: Most dimensions a tensor may have (numpy's limit: a deeper shape cannot be built).
MAX_DIMS = 32


def _shape(value: Any, name: str) -> list[int]:
    if type(value) is list:
        if len(value) > MAX_DIMS:
            raise InvalidArgument(
                f"input '{name}': shape has {len(value)} dimensions, more than the "
                f"{MAX_DIMS} supported"
            )
        for dim in value:
            if type(dim) is not int or dim < 0:  # bool is not int here, on purpose
                break
        else:
            return value
    raise InvalidArgument(f"input '{name}': 'shape' must be a list of non-negative integers")


def uses_shared_memory(params: dict[str, Any], tensor: str) -> bool:
    """Whether a tensor's parameters name a shared memory region.

    An offset or byte size without a region is an error, as in Triton.
    """
    if SHM_REGION in params:
        return True
    for key in _SHM_ORPHANS:
        if key in params:
            raise InvalidArgument(
                f"'{key}' can not be specified without '{SHM_REGION}' parameter for tensor "
                f"'{tensor}'"
            )
    return False


def _parameters(value: Any, where: str) -> dict[str, Any]:
    """A ``parameters`` object whose values are scalars, as Triton accepts them (a nested
    value would reach the batcher and the backends: refused here, for this request only)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: 'parameters' must be a JSON object")
    for key, item in value.items():
        if not isinstance(item, str | int | float):  # bool is an int
            raise InvalidArgument(
                f"parameter '{key}' has invalid type. It should be either 'int', 'bool', "
                "or 'string'."
            )
    return value


@dataclass(frozen=True, slots=True)
class _InputPlan:
    name: str
    datatype: str
    shape: tuple[int, ...]
    #: bytes of binary data it takes
    size: int
    parameters: dict[str, Any]
    #: None for BYTES (decoded element by element)
    dtype: np.dtype | None


@dataclass(frozen=True, slots=True)
class _Plan:
    """A decoded JSON header whose inputs are all binary: what a repeat of it decodes to."""

    inputs: tuple[_InputPlan, ...]
    #: bytes of binary data after the JSON
    binary_size: int
    outputs: tuple[RequestedOutput, ...] | None
    id: str
    parameters: dict[str, Any]
    binary_output: bool

    def build(self, body: bytes, start: int, model_name: str, model_version: str) -> InferRequest:
        """A fresh request (its own tensors, lists and dicts) over ``body[start:]``."""
        inputs: list[Tensor] = []
        offset = start
        for spec in self.inputs:
            if spec.dtype is None or not spec.size:
                data = datatypes.array_from_buffer(
                    spec.datatype,
                    list(spec.shape),
                    memoryview(body)[offset : offset + spec.size],
                    f"input '{spec.name}'",
                )
            else:
                count = spec.size // spec.dtype.itemsize
                data = np.frombuffer(body, spec.dtype, count, offset).reshape(spec.shape)
            inputs.append(
                Tensor(spec.name, spec.datatype, list(spec.shape), data, dict(spec.parameters))
            )
            offset += spec.size
        outputs = None
        if self.outputs is not None:
            outputs = [
                RequestedOutput(o.name, o.binary, o.classification, dict(o.parameters))
                for o in self.outputs
            ]
        return InferRequest(
            model_name,
            model_version,
            self.id,
            inputs,
            outputs,
            dict(self.parameters),
            self.binary_output,
        )


#: Plans of recent JSON headers, by their bytes.  Clients send the same header for every
#: request of one shape, so a repeat skips JSON parsing and validation.
_PLANS: dict[bytes, _Plan] = {}
_PLANS_LIMIT = 256
_PLAN_MAX_HEADER = 4096


def _all_binary(raw_inputs: Any) -> bool:
    """Whether every input takes its data from the binary part (and none from JSON/shm)."""
    if not isinstance(raw_inputs, list):
        return False
    for raw in raw_inputs:
        if not isinstance(raw, dict) or "data" in raw:
            return False
        params = raw.get("parameters")
        if not isinstance(params, dict) or "binary_data_size" not in params:
            return False
        if SHM_REGION in params or any(key in params for key in _SHM_ORPHANS):
            return False
    return True


def _remember(key: bytes, request: InferRequest, sizes: list[int], binary_size: int) -> None:
    inputs = tuple(
        _InputPlan(
            tensor.name,
            tensor.datatype,
            tuple(tensor.shape),
            size,
            dict(tensor.parameters),
            None if tensor.datatype == "BYTES" else datatypes.to_numpy_dtype(tensor.datatype),
        )
        for tensor, size in zip(request.inputs, sizes, strict=True)
    )
    outputs = None
    if request.outputs is not None:
        outputs = tuple(
            RequestedOutput(o.name, o.binary, o.classification, dict(o.parameters))
            for o in request.outputs
        )
    if len(_PLANS) >= _PLANS_LIMIT:
        _PLANS.clear()
    _PLANS[key] = _Plan(
        inputs, binary_size, outputs, request.id, dict(request.parameters), request.binary_output
    )


def decode_request(
    body: bytes,
    header_length: int | None,
    model_name: str,
    model_version: str = "",
) -> InferRequest:
    """Decode an infer request body (JSON, or JSON + binary tensor buffers)."""
    if header_length is not None and 0 < header_length <= min(_PLAN_MAX_HEADER, len(body)):
        key = bytes(body[:header_length])
        plan = _PLANS.get(key)
        if plan is not None and plan.binary_size == len(body) - header_length:
            return plan.build(body, header_length, model_name, model_version)
        request, sizes = _decode(body, header_length, model_name, model_version)
        if sizes is not None:
            _remember(key, request, sizes, len(body) - header_length)
        return request
    return _decode(body, header_length, model_name, model_version)[0]


def _decode(
    body: bytes, header_length: int | None, model_name: str, model_version: str
) -> tuple[InferRequest, list[int] | None]:
    """The request, and each input's binary size when all inputs are binary (else None)."""
    if header_length is None:
        doc = parse_json(body)
        binary = memoryview(b"")
    else:
        if header_length < 0 or header_length > len(body):
            raise InvalidArgument(
                f"Inference-Header-Content-Length {header_length} is larger than the request "
                f"body of {len(body)} bytes"
            )
        view = memoryview(body)
        doc = parse_json(view[:header_length])
        binary = view[header_length:]
    if not isinstance(doc, dict):
        raise InvalidArgument("the request JSON must be an object")

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidArgument("the request JSON must have an 'inputs' array")
    inputs: list[Tensor] = []
    sizes: list[int] | None = [] if _all_binary(raw_inputs) else None
    offset = 0
    for raw in raw_inputs:
        if not isinstance(raw, dict):
            raise InvalidArgument("each entry of 'inputs' must be a JSON object")
        tensor, used = _decode_input(raw, binary, offset)
        offset += used
        inputs.append(tensor)
        if sizes is not None:
            sizes.append(used)
    if offset != len(binary):
        raise InvalidArgument(
            f"unexpected additional input data: {len(binary) - offset} bytes of binary data "
            "are not claimed by any input's 'binary_data_size'"
        )

    params = _parameters(doc.get("parameters"), "request")
    outputs: list[RequestedOutput] | None = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidArgument("'outputs' must be an array")
        outputs = [_decode_output(raw) for raw in raw_outputs]
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("'id' must be a string")
    binary_output = params.pop("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidArgument("'binary_data_output' must be a boolean")
    request = InferRequest(
        model_name=model_name,
        model_version=model_version,
        id=request_id,
        inputs=inputs,
        outputs=outputs,
        parameters=params,
        binary_output=binary_output,
    )
    return request, sizes


def _decode_input(raw: dict[str, Any], binary: memoryview, offset: int) -> tuple[Tensor, int]:
    name = raw.get("name")
    if not isinstance(name, str):
        raise InvalidArgument("every input must have a string 'name'")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or not datatypes.is_valid(datatype):
        raise InvalidArgument(f"input '{name}' has invalid datatype {datatype!r}")
    shape = _shape(raw.get("shape"), name)
    params = _parameters(raw.get("parameters"), f"input '{name}'")
    count = datatypes.element_count(shape)
    size = params.pop("binary_data_size", None)
    if params and uses_shared_memory(params, name):
        if size is not None or "data" in raw:
            raise InvalidArgument(
                f"input '{name}' takes its data from shared memory; it must not also have "
                "'data' or 'binary_data_size'"
            )
        return Tensor(name, datatype, shape, SHM_PLACEHOLDER, params), 0
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"input '{name}': 'binary_data_size' must be an integer")
        if offset + size > len(binary):
            raise InvalidArgument(
                f"input '{name}' claims {size} bytes of binary data, but only "
                f"{len(binary) - offset} remain in the request body"
            )
        data = datatypes.array_from_buffer(
            datatype, shape, binary[offset : offset + size], f"input '{name}'"
        )
        return Tensor(name, datatype, shape, data, params), size
    if "data" not in raw:
        raise InvalidArgument(f"input '{name}' has neither 'data' nor 'binary_data_size'")
    return Tensor(
        name, datatype, shape, _from_json(name, datatype, shape, count, raw["data"]), params
    ), 0


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not data or not isinstance(data[0], list):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _from_json(name: str, datatype: str, shape: list[int], count: int, data: Any) -> np.ndarray:
    if datatype in datatypes.BINARY_ONLY:
        raise InvalidArgument(
            f"input '{name}': datatype {datatype} can only be sent as binary tensor data"
        )
    flat = _flatten(data)
    if len(flat) != count:
        raise InvalidArgument(
            f"unexpected number of elements for input '{name}': shape {shape} needs {count}, "
            f"got {len(flat)}"
        )
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise InvalidArgument(f"input '{name}': BYTES data must be JSON strings")
        return datatypes.to_bytes_array(flat).reshape(shape)
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise InvalidArgument(f"input '{name}': BOOL data must be JSON true/false")
    elif any(isinstance(v, bool | str | list | dict) or v is None for v in flat):
        raise InvalidArgument(f"input '{name}': {datatype} data must be JSON numbers")
    dtype = datatypes.to_numpy_dtype(datatype)
    if dtype.kind in "iu" and flat:
        if not all(type(v) is int for v in flat):
            raise InvalidArgument(f"input '{name}': {datatype} data must be JSON integers")
        info = np.iinfo(dtype)
        if min(flat) < info.min or max(flat) > info.max:
            raise InvalidArgument(f"input '{name}': a value is out of range for {datatype}")
    try:
        array = np.array(flat, dtype=dtype)
    except (OverflowError, ValueError, TypeError) as exc:
        raise InvalidArgument(f"input '{name}': cannot convert data to {datatype}: {exc}") from None
    return array.reshape(shape)


def _decode_output(raw: Any) -> RequestedOutput:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InvalidArgument("each entry of 'outputs' must be an object with a string 'name'")
    params = _parameters(raw.get("parameters"), f"output '{raw['name']}'")
    binary = params.pop("binary_data", None)
    if binary is not None and not isinstance(binary, bool):
        raise InvalidArgument(f"output '{raw['name']}': 'binary_data' must be a boolean")
    classification = params.pop("classification", 0)
    if (
        not isinstance(classification, int)
        or isinstance(classification, bool)
        or classification < 0
    ):
        raise InvalidArgument(f"output '{raw['name']}': 'classification' must be an integer")
    if params and uses_shared_memory(params, raw["name"]) and classification:
        raise InvalidArgument("output can't set both 'shared_memory_region' and 'classification'")
    return RequestedOutput(raw["name"], binary, classification, params)


#: Outputs up to this size are copied out with ``tobytes()`` (cheaper than a view for
#: small arrays); larger ones are written from a view.
_COPY_LIMIT = 65536


def _binary_view(tensor: Tensor) -> bytes | memoryview:
    if tensor.datatype == "BYTES":
        return datatypes.serialize_bytes(tensor.data)
    data = tensor.data
    if data.nbytes <= _COPY_LIMIT:
        return data.tobytes()
    array = np.ascontiguousarray(data).reshape(-1)
    return memoryview(array.view(np.uint8))


def _json_data(tensor: Tensor) -> list[Any]:
    if tensor.datatype in datatypes.BINARY_ONLY:
        raise InvalidArgument(
            f"output '{tensor.name}': datatype {tensor.datatype} can only be returned as "
            "binary tensor data; request it with 'binary_data': true"
        )
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [
            v.decode("utf-8", "replace") if isinstance(v, bytes | bytearray) else str(v)
            for v in flat
        ]
    return flat.tolist()


def encode_response(
    response: InferResponse, request: InferRequest
) -> tuple[list[bytes | memoryview], int | None]:
    """Encode a response: the body parts and, when any output is binary, the JSON length."""
    wanted = {o.name: o for o in request.outputs} if request.outputs else {}
    outputs: list[dict[str, Any]] = []
    buffers: list[bytes | memoryview] = []
    for tensor in response.outputs:
        requested = wanted.get(tensor.name)
        binary = request.binary_output
        if requested is not None and requested.binary is not None:
            binary = requested.binary
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        params = dict(tensor.parameters) if tensor.parameters else {}
        if tensor.data is SHM_PLACEHOLDER:
            pass  # the data plane wrote the data into shared memory
        elif binary:
            buffer = _binary_view(tensor)
            params["binary_data_size"] = len(buffer)
            buffers.append(buffer)
        else:
            entry["data"] = _json_data(tensor)
        if params:
            entry["parameters"] = params
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if buffers:
        return [header, *buffers], len(header)
    return [header], None


def raw_request(
    body: bytes,
    model_name: str,
    model_version: str,
    input_name: str,
    datatype: str,
    dims: list[int],
    batched: bool,
) -> InferRequest:
    """A request whose whole body is the data of the model's only input.

    (``Inference-Header-Content-Length: 0``.)  BYTES inputs take the body as one element;
    other types need dims that are fully known, or a single -1 that the size determines.
    """
    prefix = [1] if batched else []
    if datatype == "BYTES":
        data = datatypes.to_bytes_array([body])
        shape = prefix + [1] * max(1, len(dims))
        tensor = Tensor(input_name, datatype, shape, data.reshape(shape))
    else:
        itemsize = datatypes.to_numpy_dtype(datatype).itemsize
        if len(body) % itemsize:
            raise InvalidArgument(
                f"raw input '{input_name}': {len(body)} bytes is not a whole number of "
                f"{datatype} elements"
            )
        elements = len(body) // itemsize
        known = datatypes.element_count(d for d in dims if d != -1)
        unknown = [i for i, d in enumerate(dims) if d == -1]
        shape = list(dims)
        if len(unknown) > 1:
            raise InvalidArgument(
                f"raw input '{input_name}' has more than one variable dimension {dims}; send a "
                "JSON inference header instead"
            )
        if unknown:
            if known == 0 or elements % known:
                raise InvalidArgument(f"raw input '{input_name}': size does not fit dims {dims}")
            shape[unknown[0]] = elements // known
        elif known != elements:
            raise InvalidArgument(
                f"raw input '{input_name}' expects {known * itemsize} bytes, got {len(body)}"
            )
        shape = prefix + shape
        data = np.frombuffer(body, dtype=datatypes.to_numpy_dtype(datatype)).reshape(shape)
        tensor = Tensor(input_name, datatype, shape, data)
    return InferRequest(model_name, model_version, inputs=[tensor], binary_output=True)
