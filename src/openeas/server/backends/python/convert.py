"""Conversions between the server's request/response objects and pb_utils objects.

Received requests become ``pb_utils.InferenceRequest`` objects whose input tensors wrap
the server's numpy arrays (no copy); the model's ``pb_utils.InferenceResponse`` objects
become :class:`InferResponse` or :class:`InferenceError`.  BLS requests go the other
way: a ``pb_utils.InferenceRequest`` becomes an :class:`InferRequest` for the server and
its answer a ``pb_utils.InferenceResponse``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Any

import numpy as np

from openeas.protocol.datatypes import from_numpy_dtype
from openeas.protocol.errors import InferenceError, InternalError, error_for_triton_code
from openeas.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor
from openeas.server.backends.python import triton_python_backend_utils as pb

#: Request parameters that steer the server; they are not the model's custom parameters.
RESERVED_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "binary_data_output"}
)

SendHook = Callable[[pb.InferenceRequest, pb.InferenceResponse | None, int], None]


# --------------------------------------------------------------------------- tensors


def _to_bytes(item: Any) -> bytes:
    if type(item) is bytes:
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    return str(item).encode("utf-8")


def bytes_array(array: np.ndarray) -> np.ndarray:
    """A BYTES tensor's data as a C-contiguous ``object`` array of ``bytes``.

    ``object`` arrays that already hold only ``bytes`` are returned as they are;
    ``str`` elements are UTF-8 encoded and other objects written as ``str(x)``.
    """
    if array.dtype.kind == "O":
        flat = array.reshape(-1)
        if all(type(item) is bytes for item in flat):
            return array if array.flags.c_contiguous else np.array(array, dtype=object, order="C")
        items = [_to_bytes(item) for item in flat]
    else:
        items = [_to_bytes(item) for item in array.reshape(-1).tolist()]
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(array.shape)


#: Triton datatype names of the numeric dtypes seen so far (BYTES kinds are not kept).
_DATATYPES: dict[np.dtype, str] = {}


def to_server_tensor(tensor: pb.Tensor) -> Tensor:
    """A pb_utils tensor as a server :class:`Tensor` (shares memory when it can)."""
    array = tensor.as_numpy()
    dtype = array.dtype
    datatype = _DATATYPES.get(dtype)
    if datatype is None:
        if dtype.kind in ("O", "S", "U"):
            data = bytes_array(array)
            return Tensor(tensor.name(), "BYTES", list(data.shape), data)
        datatype = from_numpy_dtype(dtype)
        if len(_DATATYPES) < 64:
            _DATATYPES[dtype] = datatype
    data = array if array.flags.c_contiguous else np.array(array, order="C")
    return Tensor(tensor.name(), datatype, list(data.shape), data)


def to_pb_tensor(tensor: Tensor) -> pb.Tensor:
    """A server tensor as a pb_utils tensor over the same array."""
    return pb.Tensor._wrap(tensor.name, tensor.data, tensor.datatype)


# --------------------------------------------------------------------------- received requests


def request_flags(request: InferRequest) -> int:
    """``TRITONSERVER_REQUEST_FLAG_SEQUENCE_*`` bits of a server request."""
    if not request.parameters:
        return 0
    flags = 0
    if request.sequence_start:
        flags |= pb.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START
    if request.sequence_end:
        flags |= pb.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END
    return flags


def _timeout_us(parameters: dict[str, Any]) -> int:
    try:
        return max(0, int(parameters.get("timeout", 0) or 0))
    except (TypeError, ValueError):
        return 0


def requested_outputs(request: InferRequest, config_outputs: list[str]) -> list[str] | None:
    """The output names a request wants: its own list, or every output of the config.

    None means "no filter" (the request names none and the config lists none).  An
    empty list counts as "all outputs", as in Triton.
    """
    if request.outputs:
        return [output.name for output in request.outputs]
    return list(config_outputs) if config_outputs else None


def to_pb_request(
    request: InferRequest,
    *,
    model_name: str,
    model_version: int,
    output_names: list[str] | None,
    send_hook: SendHook,
    cancelled_hook: Callable[[], bool] | None = None,
) -> pb.InferenceRequest:
    """The ``pb_utils.InferenceRequest`` that ``execute`` gets for a server request."""
    parameters = request.parameters
    custom = (
        {k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS}
        if parameters
        else None
    )
    # positional: this runs for every request and keyword matching costs
    return pb.InferenceRequest._received(
        request.id,
        request.correlation_id,
        [to_pb_tensor(tensor) for tensor in request.inputs],
        list(output_names or ()),
        model_name,
        model_version,
        request_flags(request),
        _timeout_us(parameters) if "timeout" in parameters else 0,
        json.dumps(custom, default=str) if custom else "{}",
        send_hook,
        cancelled_hook,
    )


def _error_from_pb(error: pb.TritonError) -> InferenceError:
    code = error.code() if isinstance(error, pb.TritonError) else pb.TritonErrorCode.INTERNAL
    message = error.message() if isinstance(error, pb.TritonError) else str(error)
    return error_for_triton_code(pb.TritonErrorCode(code).name, message)


def to_server_response(
    request: InferRequest,
    response: Any,
    *,
    model_version: str,
    requested: Collection[str] | None,
) -> InferResponse | InferenceError:
    """The server's answer to ``request`` from the model's ``pb_utils.InferenceResponse``.

    Outputs the request did not ask for are dropped; an error response becomes the
    :class:`InferenceError` subclass of its code.
    """
    if not isinstance(response, pb.InferenceResponse):
        return InternalError(
            f"Expected an 'InferenceResponse' object in the execute function return list, "
            f"found type '{type(response).__name__}'."
        )
    error = response.error()
    if error is not None:
        return _error_from_pb(error)
    wanted = None if requested is None else set(requested)
    outputs: list[Tensor] = []
    try:
        for tensor in response.output_tensors():
            if wanted is not None and tensor.name() not in wanted:
                continue
            outputs.append(to_server_tensor(tensor))
        raw = response.parameters()
        parameters = json.loads(raw) if raw and raw != "{}" else {}
    except InferenceError as exc:
        return InternalError(f"failed to read the response of the model: {exc}")
    except (TypeError, ValueError) as exc:
        return InternalError(f"failed to read the response of the model: {exc}")
    return InferResponse(
        request.model_name,
        model_version,
        request.id,
        outputs,
        parameters if isinstance(parameters, dict) else {},
    )


# --------------------------------------------------------------------------- BLS


def to_bls_request(request: pb.InferenceRequest) -> InferRequest:
    """The server request for a BLS ``pb_utils.InferenceRequest``."""
    parameters: dict[str, Any] = json.loads(request.parameters() or "{}")
    correlation_id = request.correlation_id()
    if correlation_id not in (0, ""):
        parameters["sequence_id"] = correlation_id
    flags = request.flags()
    if flags & pb.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
        parameters["sequence_start"] = True
    if flags & pb.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END:
        parameters["sequence_end"] = True
    names = request.requested_output_names()
    version = request.model_version()
    return InferRequest(
        model_name=request.model_name(),
        model_version="" if version < 0 else str(version),
        id=request.request_id(),
        inputs=[to_server_tensor(tensor) for tensor in request.inputs()],
        outputs=[RequestedOutput(name) for name in names] if names else None,
        parameters=parameters,
    )


def from_bls_response(response: InferResponse) -> pb.InferenceResponse:
    """The ``pb_utils.InferenceResponse`` for a server response to a BLS request."""
    outputs = [to_pb_tensor(tensor) for tensor in response.outputs]
    parameters = json.dumps(response.parameters, default=str) if response.parameters else "{}"
    return pb.InferenceResponse._build(outputs, None, parameters)


def error_response(exc: BaseException) -> pb.InferenceResponse:
    """A ``pb_utils.InferenceResponse`` carrying ``exc`` as its error."""
    return pb.InferenceResponse._build([], pb.TritonError._from_inference_error(exc), "{}")
