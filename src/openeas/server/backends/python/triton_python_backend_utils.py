"""Triton's ``triton_python_backend_utils`` module, served in-process.

Model files do ``import triton_python_backend_utils as pb_utils``; the Python backend
registers this module under that name in :data:`sys.modules` before it imports a
model, so every ``model.py`` written for Triton's Python backend finds the names it
expects: :class:`Tensor`, :class:`InferenceRequest` (received requests and BLS
requests), :class:`InferenceResponse`, :class:`TritonError`,
:class:`TritonModelException`, the ``get_*_by_name`` helpers, the datatype converters
(with Triton's integer ``TRITONSERVER_DataType`` values), the BYTES (de)serializers,
:class:`ModelConfig` for ``auto_complete_config``, :class:`Logger`, custom metrics and
the ``TRITONSERVER_*`` constants.

Tensors are CPU numpy arrays; received input tensors wrap the server's arrays without a
copy.  BYTES tensors are ``object`` arrays of ``bytes``, as Triton hands them out.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import numpy as np

from openeas.protocol import datatypes as _datatypes
from openeas.protocol.errors import InferenceError as _InferenceError

__all__ = [
    "InferenceRequest",
    "InferenceResponse",
    "InferenceTrace",
    "LogLevel",
    "Logger",
    "Metric",
    "MetricFamily",
    "ModelConfig",
    "PreferredMemory",
    "ResponseIterator",
    "ResponseSender",
    "Tensor",
    "TritonError",
    "TritonModelException",
    "deserialize_bytes_tensor",
    "get_input_config_by_name",
    "get_input_tensor_by_name",
    "get_output_config_by_name",
    "get_output_tensor_by_name",
    "numpy_to_triton_type",
    "serialize_byte_tensor",
    "triton_string_to_numpy",
    "triton_to_numpy_type",
    "using_decoupled_model_transaction_policy",
]

# --------------------------------------------------------------------------- constants

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

TRITONSERVER_MEMORY_CPU = 0
TRITONSERVER_MEMORY_CPU_PINNED = 1
TRITONSERVER_MEMORY_GPU = 2

#: ``TRITONSERVER_DataType`` values, keyed by Triton datatype name.
_TYPE_IDS: dict[str, int] = {
    "BOOL": 1,
    "UINT8": 2,
    "UINT16": 3,
    "UINT32": 4,
    "UINT64": 5,
    "INT8": 6,
    "INT16": 7,
    "INT32": 8,
    "INT64": 9,
    "FP16": 10,
    "FP32": 11,
    "FP64": 12,
    "BYTES": 13,
    "BF16": 14,
}
_TYPE_NAMES: dict[int, str] = {v: k for k, v in _TYPE_IDS.items()}
_BYTES_ID = _TYPE_IDS["BYTES"]

#: numpy scalar type for each ``TRITONSERVER_DataType`` value.
_ID_TO_NUMPY: dict[int, Any] = {
    1: np.bool_,
    2: np.uint8,
    3: np.uint16,
    4: np.uint32,
    5: np.uint64,
    6: np.int8,
    7: np.int16,
    8: np.int32,
    9: np.int64,
    10: np.float16,
    11: np.float32,
    12: np.float64,
    13: np.object_,
    14: _datatypes.BF16.type,
}

#: What ``triton_string_to_numpy`` returns for config type names (Triton: Python ``bool``).
_STRING_TO_NUMPY: dict[str, Any] = {
    "BOOL": bool,
    **{name: _ID_TO_NUMPY[type_id] for name, type_id in _TYPE_IDS.items() if name != "BOOL"},
}


def _type_name(triton_type: str) -> str:
    """``TYPE_FP32``/``FP32`` -> ``FP32``; ``TYPE_STRING``/``STRING`` -> ``BYTES``."""
    name = triton_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


# --------------------------------------------------------------------------- errors


class TritonErrorCode(enum.IntEnum):
    """``TRITONSERVER_Error_Code`` values; the names match ``InferenceError.triton_code``."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7


class TritonError(Exception):
    """An error with one of Triton's error codes.

    Put it in a response (``InferenceResponse(..., error=TritonError("msg"))``) to fail
    one request; the client gets ``message`` with the HTTP/gRPC status of ``code``.
    (It is also an ``Exception`` so that the backend can raise it.)
    """

    UNKNOWN = TritonErrorCode.UNKNOWN
    INTERNAL = TritonErrorCode.INTERNAL
    NOT_FOUND = TritonErrorCode.NOT_FOUND
    INVALID_ARG = TritonErrorCode.INVALID_ARG
    UNAVAILABLE = TritonErrorCode.UNAVAILABLE
    UNSUPPORTED = TritonErrorCode.UNSUPPORTED
    ALREADY_EXISTS = TritonErrorCode.ALREADY_EXISTS
    CANCELLED = TritonErrorCode.CANCELLED

    def __init__(self, message: str = "", code: int = TritonErrorCode.INTERNAL) -> None:
        self._message = "" if message is None else str(message)
        try:
            self._code = TritonErrorCode(int(code))
        except (TypeError, ValueError):
            raise TritonModelException(f"invalid TritonError code: {code!r}") from None
        super().__init__(self._message)

    def message(self) -> str:
        """The error message."""
        return self._message

    def code(self) -> TritonErrorCode:
        """The error code (one of the class constants)."""
        return self._code

    def __str__(self) -> str:
        return self._message

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code=TritonError.{self._code.name})"

    @classmethod
    def _from_inference_error(cls, exc: BaseException) -> TritonError:
        """The TritonError that carries a server error (unknown kinds become INTERNAL)."""
        if isinstance(exc, _InferenceError):
            code = TritonErrorCode.__members__.get(exc.triton_code, TritonErrorCode.UNKNOWN)
            return cls(exc.message, code)
        return cls(f"{type(exc).__name__}: {exc}", TritonErrorCode.INTERNAL)


class TritonModelException(Exception):
    """The exception that pb_utils raises, and that models raise to fail a whole batch."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self._message = "" if message is None else str(message)

    def message(self) -> str:
        """The exception message."""
        return self._message

    def __str__(self) -> str:
        return self._message


# --------------------------------------------------------------------------- datatypes


def triton_to_numpy_type(data_type: int | str) -> Any:
    """The numpy type for a ``TRITONSERVER_DataType`` value (``11`` -> ``np.float32``).

    Datatype names (``"FP32"``, ``"TYPE_FP32"``) are accepted too; unknown values give
    ``None`` as in Triton.
    """
    if isinstance(data_type, str):
        type_id = _TYPE_IDS.get(_type_name(data_type))
        return None if type_id is None else _ID_TO_NUMPY[type_id]
    try:
        return _ID_TO_NUMPY.get(int(data_type))
    except (TypeError, ValueError):
        return None


#: numpy_to_triton_type's answers by dtype (every tensor asks; programs use few types).
_NUMPY_TYPE_IDS: dict[np.dtype, int | None] = {}


def numpy_to_triton_type(data_type: Any) -> int | None:
    """The ``TRITONSERVER_DataType`` value for a numpy dtype or type (``np.float32`` -> 11).

    ``object``, ``bytes_`` and ``str_`` map to BYTES (13); unsupported types give None.
    """
    if isinstance(data_type, np.dtype):
        try:
            return _NUMPY_TYPE_IDS[data_type]
        except KeyError:
            answer = _numpy_to_triton_type(data_type)
            if len(_NUMPY_TYPE_IDS) < 64:
                _NUMPY_TYPE_IDS[data_type] = answer
            return answer
    return _numpy_to_triton_type(data_type)


def _numpy_to_triton_type(data_type: Any) -> int | None:
    if data_type is None:
        return None
    try:
        dtype = np.dtype(data_type)
    except TypeError:
        return None
    if dtype.kind in ("O", "S", "U"):
        return _BYTES_ID
    try:
        return _TYPE_IDS[_datatypes.from_numpy_dtype(dtype)]
    except _InferenceError:
        return None


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """The numpy type for a config datatype such as ``"TYPE_FP32"`` (or ``"FP32"``).

    Raises ``KeyError`` for an unknown name, as Triton does.
    """
    return _STRING_TO_NUMPY[_type_name(triton_type_string)]


def serialize_byte_tensor(input_tensor: np.ndarray) -> bytes | None:
    """Flatten a BYTES tensor in C order: each element as a 4-byte little-endian length
    and its bytes.  Non-bytes elements of ``object`` arrays are written as ``str(x)``
    in UTF-8.  Returns None for arrays that are not bytes/object/str arrays.
    """
    array = np.asarray(input_tensor)
    if array.size == 0:
        return b""
    if array.dtype.kind not in ("O", "S", "U"):
        return None
    return _datatypes.serialize_bytes(array)


def deserialize_bytes_tensor(
    encoded_tensor: bytes | bytearray | memoryview | np.ndarray,
) -> np.ndarray:
    """Decode length-prefixed elements into a 1-D ``object`` array of ``bytes``."""
    return _datatypes.deserialize_bytes(encoded_tensor)


# --------------------------------------------------------------------------- tensors


class _CapsuleProducer:
    """Lets ``np.from_dlpack`` consume a bare DLPack capsule."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)


class Tensor:
    """A named tensor in a request or response; its data is a CPU numpy array.

    ``Tensor("OUTPUT0", array)`` keeps ``array`` as it is (no copy).  BYTES tensors
    are ``object`` arrays of ``bytes``; ``str``/``bytes_`` arrays are accepted and sent
    as BYTES.
    """

    __slots__ = ("_array", "_dtype", "_name")

    def __init__(self, name: str, numpy_array: Any) -> None:
        if not isinstance(name, str):
            raise TritonModelException(f"tensor name must be a str, got {type(name).__name__}")
        array = numpy_array if isinstance(numpy_array, np.ndarray) else np.asarray(numpy_array)
        type_id = numpy_to_triton_type(array.dtype)
        if type_id is None:
            raise TritonModelException(
                f"Tensor dtype used for numpy_array ({array.dtype}) is not supported by the "
                f"Python backend (tensor '{name}')"
            )
        self._name = name
        self._array = array
        self._dtype = type_id

    @classmethod
    def _wrap(cls, name: str, array: np.ndarray, datatype: str) -> Tensor:
        """Wrap a server tensor's array without checks or copies."""
        tensor = cls.__new__(cls)
        tensor._name = name
        tensor._array = array
        tensor._dtype = _TYPE_IDS.get(datatype) or numpy_to_triton_type(array.dtype) or 0
        return tensor

    def name(self) -> str:
        """The tensor's name."""
        return self._name

    def as_numpy(self) -> np.ndarray:
        """The tensor's data (the same array, not a copy)."""
        return self._array

    def triton_dtype(self) -> int:
        """The ``TRITONSERVER_DataType`` value of the tensor (e.g. 11 for FP32)."""
        return self._dtype

    def shape(self) -> list[int]:
        """The tensor's shape."""
        return [int(d) for d in self._array.shape]

    def is_cpu(self) -> bool:
        """Always True: tensors of this backend live in CPU memory."""
        return True

    def to_dlpack(self) -> Any:
        """A DLPack capsule that shares the tensor's memory (BYTES tensors cannot)."""
        array = self._dlpack_array()
        return array.__dlpack__()

    def __dlpack__(self, stream: Any = None, **kwargs: Any) -> Any:
        return self._dlpack_array().__dlpack__()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)

    def _dlpack_array(self) -> np.ndarray:
        if self._dtype == _BYTES_ID:
            raise TritonModelException(
                f"tensor '{self._name}': BYTES tensors cannot be converted to DLPack"
            )
        array = self._array
        if not array.flags.writeable:
            # DLPack cannot say "read-only"; numpy refuses to export such arrays.
            array = array.copy()
            self._array = array
        return array

    @staticmethod
    def from_dlpack(name: str, dlpack: Any) -> Tensor:
        """A tensor from a DLPack capsule or any object with ``__dlpack__`` (CPU only)."""
        producer = dlpack if hasattr(dlpack, "__dlpack__") else _CapsuleProducer(dlpack)
        try:
            array = np.from_dlpack(producer)
        except (BufferError, RuntimeError, TypeError, ValueError) as exc:
            raise TritonModelException(
                f"tensor '{name}': unable to import DLPack data (only CPU tensors are "
                f"supported): {exc}"
            ) from None
        return Tensor(name, array)

    def __repr__(self) -> str:
        dtype = _TYPE_NAMES.get(self._dtype, "INVALID")
        return f"Tensor(name={self._name!r}, dtype={dtype}, shape={self.shape()})"


# --------------------------------------------------------------------------- requests


def _parameters_to_json(parameters: dict[str, Any] | str | None) -> str:
    """Triton's check of request/response ``parameters``: a dict of str -> bool/int/float/str
    (or the same as a JSON string); stored as JSON text."""
    if parameters is None:
        return "{}"
    if isinstance(parameters, str | bytes):
        try:
            parsed = json.loads(parameters)
        except ValueError as exc:
            raise TritonModelException(f"parameters is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise TritonModelException("parameters must be a JSON object")
        parameters = parsed
    if not isinstance(parameters, dict):
        raise TritonModelException(
            f"Expect parameters to be a dict or a JSON string, got {type(parameters).__name__}"
        )
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise TritonModelException("Expect parameters keys to have type str")
        if not isinstance(value, bool | int | float | str):
            raise TritonModelException(
                f"Expect parameters values to have type bool/int/float/str, found "
                f"{type(value).__name__} for key '{key}'"
            )
    return json.dumps(parameters)


class PreferredMemory:
    """Where a BLS response's outputs should live; accepted and ignored (always CPU)."""

    def __init__(
        self, preferred_memory_type: int = TRITONSERVER_MEMORY_CPU, preferred_device_id: int = 0
    ) -> None:
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


class InferenceTrace:
    """A request's trace context; tracing is not implemented, so it carries nothing."""


#: Shared defaults of received requests (nothing in the backend modifies them).
_CPU_MEMORY = PreferredMemory()
_NO_TRACE = InferenceTrace()


class ResponseSender:
    """Sends responses for one received request (``request.get_response_sender()``).

    The backend decides what sending means through the ``send`` callback: for a model
    with the decoupled transaction policy each call hands a response (and/or the final
    flag) to the client, from any thread; sending after the final flag raises
    ``TritonError``.  Other models get ``TritonError(UNSUPPORTED)``.
    """

    def __init__(
        self,
        request: InferenceRequest,
        send: Callable[[InferenceRequest, InferenceResponse | None, int], None],
    ) -> None:
        self._request = request
        self._send = send

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        """Send ``response`` (and/or ``flags``, e.g. ``TRITONSERVER_RESPONSE_COMPLETE_FINAL``)."""
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException(
                f"send() expects an InferenceResponse, got {type(response).__name__}"
            )
        self._send(self._request, response, int(flags))

    def is_cancelled(self) -> bool:
        """Whether the client cancelled the request."""
        return self._request.is_cancelled()


class ResponseIterator:
    """The responses of a decoupled BLS call (``exec(decoupled=True)``), in order."""

    def __init__(self, responses: Iterable[InferenceResponse]) -> None:
        self._responses: Iterator[InferenceResponse] = iter(list(responses))

    def __iter__(self) -> ResponseIterator:
        return self

    def __next__(self) -> InferenceResponse:
        return next(self._responses)

    def cancel(self) -> None:
        """Cancel the outstanding request (a no-op: responses are already complete)."""


class InferenceRequest:
    """An inference request: one the model received, or a BLS request it builds.

    Build a BLS request with ``InferenceRequest(model_name=..., inputs=[...],
    requested_output_names=[...])`` and run it with :meth:`exec` (blocking) or
    ``await request.async_exec()`` (from an ``async def execute``).  Errors of the
    called model come back in the response's ``error()``; they are not raised.
    """

    def __init__(
        self,
        request_id: str = "",
        correlation_id: int | str = 0,
        inputs: list[Tensor] | None = None,
        requested_output_names: list[str] | None = None,
        model_name: str = "",
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: PreferredMemory | None = None,
        trace: InferenceTrace | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        inputs = [] if inputs is None else list(inputs)
        for tensor in inputs:
            if not isinstance(tensor, Tensor):
                raise TritonModelException(
                    f"InferenceRequest inputs must be pb_utils.Tensor objects, got "
                    f"{type(tensor).__name__}"
                )
        names = [] if requested_output_names is None else list(requested_output_names)
        if not all(isinstance(n, str) for n in names):
            raise TritonModelException("requested_output_names must be a list of str")
        if not isinstance(model_name, str):
            raise TritonModelException("model_name must be a str")
        if not isinstance(correlation_id, int | str):
            raise TritonModelException("correlation_id must be an int or a str")
        self._request_id = str(request_id)
        self._correlation_id: int | str = correlation_id
        self._inputs = inputs
        self._requested_output_names = names
        self._model_name = model_name
        self._model_version = int(model_version)
        self._flags = int(flags)
        self._timeout = int(timeout)
        self._preferred_memory = preferred_memory or PreferredMemory()
        self._trace = trace or InferenceTrace()
        self._parameters = _parameters_to_json(parameters)
        self._send_hook: Callable[[InferenceRequest, InferenceResponse | None, int], None] | None
        self._send_hook = None
        self._cancelled_hook: Callable[[], bool] | None = None
        self._sender: ResponseSender | None = None

    @classmethod
    def _received(
        cls,
        request_id: str,
        correlation_id: int | str,
        inputs: list[Tensor],
        requested_output_names: list[str],
        model_name: str,
        model_version: int,
        flags: int,
        timeout: int,
        parameters_json: str,
        send_hook: Callable[[InferenceRequest, InferenceResponse | None, int], None],
        cancelled_hook: Callable[[], bool] | None = None,
    ) -> InferenceRequest:
        """A request handed to ``execute`` (built by the backend, no validation)."""
        request = cls.__new__(cls)
        request._request_id = request_id
        request._correlation_id = correlation_id
        request._inputs = inputs
        request._requested_output_names = requested_output_names
        request._model_name = model_name
        request._model_version = model_version
        request._flags = flags
        request._timeout = timeout
        request._preferred_memory = _CPU_MEMORY
        request._trace = _NO_TRACE
        request._parameters = parameters_json
        request._send_hook = send_hook
        request._cancelled_hook = cancelled_hook
        request._sender = None
        return request

    def inputs(self) -> list[Tensor]:
        """The input tensors."""
        return self._inputs

    def request_id(self) -> str:
        """The request's ID ("" when the client gave none)."""
        return self._request_id

    def correlation_id(self) -> int | str:
        """The sequence (correlation) ID; 0 when the request is not part of a sequence."""
        return self._correlation_id

    def flags(self) -> int:
        """``TRITONSERVER_REQUEST_FLAG_SEQUENCE_START``/``_END`` bits."""
        return self._flags

    def set_flags(self, flags: int) -> None:
        """Set the request flags (BLS requests)."""
        self._flags = int(flags)

    def model_name(self) -> str:
        """The model the request is for."""
        return self._model_name

    def model_version(self) -> int:
        """The model version the request is for (-1: the server picks)."""
        return self._model_version

    def requested_output_names(self) -> list[str]:
        """The names of the outputs the response should hold."""
        return self._requested_output_names

    def parameters(self) -> str:
        """The request's parameters as a JSON object string."""
        return self._parameters

    def timeout(self) -> int:
        """The request timeout in microseconds (0: none)."""
        return self._timeout

    def trace(self) -> InferenceTrace:
        """The request's trace context."""
        return self._trace

    def is_cancelled(self) -> bool:
        """Whether the client cancelled the request."""
        hook = self._cancelled_hook
        return bool(hook()) if hook is not None else False

    def get_response_sender(self) -> ResponseSender:
        """The sender for this (received) request's responses."""
        if self._send_hook is None:
            raise TritonModelException(
                "get_response_sender() is only available on requests passed to execute()"
            )
        if self._sender is None:
            self._sender = ResponseSender(self, self._send_hook)
        return self._sender

    def set_release_flags(self, flags: int) -> None:
        """Request rescheduling; not supported by this server."""
        raise TritonModelException("set_release_flags() (request rescheduling) is not supported")

    def exec(self, decoupled: bool = False) -> InferenceResponse | ResponseIterator:
        """Run this request on another model and wait for its response (BLS).

        With ``decoupled=True`` the result is an iterator over the model's responses.
        """
        from openeas.server.backends.python import bls

        response = bls.exec_blocking(self)
        return ResponseIterator([response]) if decoupled else response

    def async_exec(
        self, decoupled: bool = False
    ) -> Awaitable[InferenceResponse | ResponseIterator]:
        """Start this request on another model; await the result (BLS).

        Must be called while the model's event loop runs (inside ``async def execute``).
        """
        from openeas.server.backends.python import bls

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise TritonModelException(
                "async_exec() must be called from a coroutine (use 'async def execute')"
            ) from None
        return loop.create_task(bls.exec_async(self, decoupled))

    def __repr__(self) -> str:
        return (
            f"InferenceRequest(model_name={self._model_name!r}, request_id={self._request_id!r}, "
            f"inputs={[t.name() for t in self._inputs]})"
        )


class InferenceResponse:
    """The response to one request: output tensors, or an error."""

    def __init__(
        self,
        output_tensors: list[Tensor] | None = None,
        error: TritonError | None = None,
        parameters: dict[str, Any] | str | None = None,
    ) -> None:
        if output_tensors is None:
            output_tensors = []
        if not isinstance(output_tensors, list | tuple):
            raise TritonModelException('"output_tensors" must be a list.')
        for tensor in output_tensors:
            if not isinstance(tensor, Tensor):
                raise TritonModelException(
                    f"output_tensors must hold pb_utils.Tensor objects, got {type(tensor).__name__}"
                )
        if error is not None and not isinstance(error, TritonError):
            raise TritonModelException(
                f"error must be a pb_utils.TritonError, got {type(error).__name__}"
            )
        self._output_tensors = list(output_tensors)
        self._error = error
        self._parameters = _parameters_to_json(parameters)

    @classmethod
    def _build(
        cls, output_tensors: list[Tensor], error: TritonError | None, parameters_json: str
    ) -> InferenceResponse:
        """A response built by the backend (BLS results), without validation."""
        response = cls.__new__(cls)
        response._output_tensors = output_tensors
        response._error = error
        response._parameters = parameters_json
        return response

    def output_tensors(self) -> list[Tensor]:
        """The output tensors."""
        return self._output_tensors

    def has_error(self) -> bool:
        """Whether the response carries an error."""
        return self._error is not None

    def error(self) -> TritonError | None:
        """The response's error, or None."""
        return self._error

    def parameters(self) -> str:
        """The response's parameters as a JSON object string."""
        return self._parameters

    def __repr__(self) -> str:
        if self._error is not None:
            return f"InferenceResponse(error={self._error!r})"
        return f"InferenceResponse(output_tensors={self._output_tensors!r})"


# --------------------------------------------------------------------------- lookups


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    """The request's input tensor called ``name``, or None."""
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    """The response's output tensor called ``name``, or None."""
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The ``input`` entry called ``name`` of a model config dict, or None."""
    for entry in model_config.get("input", ()):
        if entry.get("name") == name:
            return entry
    return None


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The ``output`` entry called ``name`` of a model config dict, or None."""
    for entry in model_config.get("output", ()):
        if entry.get("name") == name:
            return entry
    return None


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    """Whether a model config dict uses the decoupled transaction policy."""
    policy = model_config.get("model_transaction_policy") or {}
    return bool(policy.get("decoupled", False))


# --------------------------------------------------------------------------- auto-complete

_INPUT_PROPERTIES = (
    "name",
    "data_type",
    "dims",
    "optional",
    "is_shape_tensor",
    "format",
    "allow_ragged_batch",
    "reshape",
)
_OUTPUT_PROPERTIES = ("name", "data_type", "dims", "is_shape_tensor", "label_filename", "reshape")


class ModelConfig:
    """The model configuration handed to ``TritonPythonModel.auto_complete_config``.

    ``as_dict()`` gives the config as Triton prints it; the setters check what the
    model asks for against what the config already says, as Triton does (and raise
    ``ValueError`` on a conflict).
    """

    def __init__(self, model_config: str | bytes | dict[str, Any]) -> None:
        if isinstance(model_config, dict):
            self._model_config = model_config
        else:
            self._model_config = json.loads(model_config)
        self._model_config.setdefault("input", [])
        self._model_config.setdefault("output", [])
        self._model_config.setdefault("max_batch_size", 0)

    def _name(self) -> str:
        return str(self._model_config.get("name", ""))

    def as_dict(self) -> dict[str, Any]:
        """The configuration as a dict (treat it as read-only)."""
        return self._model_config

    def max_batch_size(self) -> int:
        """The configured ``max_batch_size``."""
        return int(self._model_config.get("max_batch_size", 0))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        """Set ``max_batch_size``; a larger non-zero configured value is an error."""
        current = self.max_batch_size()
        if current > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {current}, but in "
                f"auto-complete-config function for model '{self._name()}' specified "
                f"max_batch_size {max_batch_size}"
            )
        self._model_config["max_batch_size"] = int(max_batch_size)

    def set_dynamic_batching(self) -> None:
        """Use the dynamic batcher unless the config already chose another scheduler."""
        for other in ("sequence_batching", "ensemble_scheduling"):
            if other in self._model_config:
                raise ValueError(
                    f"Configuration specified scheduling_choice as '{other}', but "
                    f"auto-complete-config function for model '{self._name()}' tries to set "
                    f"scheduling_choice as 'dynamic_batching'"
                )
        self._model_config.setdefault("dynamic_batching", {})

    def _check_tensor(self, kind: str, tensor: dict[str, Any], allowed: tuple[str, ...]) -> None:
        if not isinstance(tensor, dict):
            raise ValueError(
                f"{kind} in auto-complete-config function for model '{self._name()}' must be a dict"
            )
        label = tensor.get("name", "")
        for key in tensor:
            if key not in allowed:
                raise ValueError(
                    f"{kind} '{label}' in auto-complete-config function for model "
                    f"'{self._name()}' contains property other than "
                    f"{', '.join(repr(a) for a in allowed)}."
                )
        if "name" not in tensor:
            raise ValueError(
                f"{kind} in auto-complete-config function for model '{self._name()}' is "
                f"missing 'name' property."
            )
        for required in ("data_type", "dims"):
            if required not in tensor:
                raise ValueError(
                    f"{kind} '{label}' in auto-complete-config function for model "
                    f"'{self._name()}' is missing '{required}' property."
                )

    def _add_tensor(
        self, kind: str, key: str, tensor: dict[str, Any], allowed: tuple[str, ...]
    ) -> None:
        self._check_tensor(kind, tensor, allowed)
        name = tensor["name"]
        for current in self._model_config.setdefault(key, []):
            if current.get("name") != name:
                continue
            current_type = current.get("data_type", "TYPE_INVALID")
            if current_type != "TYPE_INVALID" and current_type != tensor["data_type"]:
                raise ValueError(
                    f"unable to load model '{self._name()}', configuration expects datatype "
                    f"{current_type} for {kind} '{name}', model provides {tensor['data_type']}"
                )
            current_dims = list(current.get("dims") or [])
            if current_dims and current_dims != list(tensor["dims"]):
                raise ValueError(
                    f"model '{self._name()}', tensor '{name}': the model expects dims "
                    f"{list(tensor['dims'])} but the model configuration specifies dims "
                    f"{current_dims}"
                )
            if (
                "optional" in current
                and "optional" in tensor
                and current["optional"] not in (False, tensor["optional"])
            ):
                raise ValueError(
                    f"model '{self._name()}', tensor '{name}': the model expects optional "
                    f"{tensor['optional']} but the model configuration specifies optional "
                    f"{current['optional']}"
                )
            current.update(tensor)
            return
        self._model_config[key].append(dict(tensor))

    def add_input(self, input: dict[str, Any]) -> None:  # noqa: A002 - Triton's name
        """Add (or complete) an input: a dict with ``name``, ``data_type``, ``dims``
        (and optionally ``optional``)."""
        self._add_tensor("input", "input", input, _INPUT_PROPERTIES)

    def add_output(self, output: dict[str, Any]) -> None:
        """Add (or complete) an output: a dict with ``name``, ``data_type``, ``dims``."""
        self._add_tensor("output", "output", output, _OUTPUT_PROPERTIES)

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        """Set ``model_transaction_policy`` (only ``decoupled`` may be given)."""
        for key in transaction_policy_dict:
            if key != "decoupled":
                raise ValueError(
                    f"model transaction property in auto-complete-config function for model "
                    f"'{self._name()}' contains property other than 'decoupled'."
                )
        policy = self._model_config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            wanted = bool(transaction_policy_dict["decoupled"])
            if "decoupled" in policy and bool(policy["decoupled"]) != wanted:
                raise ValueError(
                    f"trying to change decoupled property in auto-complete-config for model "
                    f"'{self._name()}', which is already set to '{policy['decoupled']}'."
                )
            policy["decoupled"] = wanted


# --------------------------------------------------------------------------- logging

_LOGGER = logging.getLogger("openeas.python_backend")


class LogLevel(enum.IntEnum):
    """Severity of a :class:`Logger` message."""

    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


_PY_LEVELS = {
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
    LogLevel.VERBOSE: logging.DEBUG,
}


class Logger:
    """Triton's model logger; messages go to the ``openeas.python_backend`` logger."""

    @staticmethod
    def _emit(message: Any, level: LogLevel) -> None:
        _LOGGER.log(_PY_LEVELS.get(LogLevel(level), logging.INFO), "%s", message, stacklevel=3)

    @staticmethod
    def log(message: Any, level: LogLevel = LogLevel.INFO) -> None:
        """Log ``message`` at ``level``."""
        Logger._emit(message, level)

    @staticmethod
    def log_info(message: Any) -> None:
        """Log at INFO."""
        Logger._emit(message, LogLevel.INFO)

    @staticmethod
    def log_warn(message: Any) -> None:
        """Log at WARNING."""
        Logger._emit(message, LogLevel.WARNING)

    @staticmethod
    def log_error(message: Any) -> None:
        """Log at ERROR."""
        Logger._emit(message, LogLevel.ERROR)

    @staticmethod
    def log_verbose(message: Any) -> None:
        """Log at VERBOSE (Python's DEBUG)."""
        Logger._emit(message, LogLevel.VERBOSE)


# --------------------------------------------------------------------------- metrics


class MetricFamily:
    """A family of custom metrics (``COUNTER``, ``GAUGE`` or ``HISTOGRAM``).

    Values are kept in memory (:data:`METRIC_FAMILIES`); they are not exported yet.
    """

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2

    def __init__(self, name: str, description: str, kind: int) -> None:
        if kind not in (self.COUNTER, self.GAUGE, self.HISTOGRAM):
            raise TritonModelException(f"invalid metric kind {kind!r} for metric family '{name}'")
        with _METRICS_LOCK:
            existing = METRIC_FAMILIES.get(name)
            if existing is not None and existing.kind != kind:
                raise TritonModelException(
                    f"metric family '{name}' already exists with a different kind"
                )
            self.name = name
            self.description = description
            self.kind = kind
            self._metrics: dict[tuple[tuple[str, str], ...], Metric] = (
                existing._metrics if existing is not None else {}
            )
            METRIC_FAMILIES[name] = self

    def Metric(  # noqa: N802 - Triton's name
        self, labels: dict[str, str] | None = None, buckets: list[float] | None = None
    ) -> Metric:
        """The metric of this family with ``labels`` (created on first use)."""
        if self.kind == self.HISTOGRAM and not buckets:
            raise TritonModelException("histogram metrics need buckets")
        key = tuple(sorted((str(k), str(v)) for k, v in (labels or {}).items()))
        with _METRICS_LOCK:
            metric = self._metrics.get(key)
            if metric is None:
                metric = Metric(self, dict(key), buckets)
                self._metrics[key] = metric
            return metric


class Metric:
    """One labelled metric of a :class:`MetricFamily`."""

    def __init__(
        self, family: MetricFamily, labels: dict[str, str], buckets: list[float] | None = None
    ) -> None:
        self.family = family
        self.labels = labels
        self.buckets = sorted(buckets) if buckets else []
        self._value = 0.0
        self._sum = 0.0
        self._count = 0
        self._bucket_counts = [0] * len(self.buckets)
        self._lock = threading.Lock()

    def increment(self, value: float) -> None:
        """Add ``value`` (counters only go up)."""
        if self.family.kind == MetricFamily.HISTOGRAM:
            raise TritonModelException("histogram metrics do not support increment()")
        if self.family.kind == MetricFamily.COUNTER and value < 0:
            raise TritonModelException("counter metrics cannot be decremented")
        with self._lock:
            self._value += value

    def set(self, value: float) -> None:
        """Set a gauge's value."""
        if self.family.kind != MetricFamily.GAUGE:
            raise TritonModelException("only gauge metrics support set()")
        with self._lock:
            self._value = float(value)

    def observe(self, value: float) -> None:
        """Record one observation of a histogram."""
        if self.family.kind != MetricFamily.HISTOGRAM:
            raise TritonModelException("only histogram metrics support observe()")
        with self._lock:
            self._sum += value
            self._count += 1
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._bucket_counts[i] += 1

    def value(self) -> float:
        """The current value (a histogram's sum of observations)."""
        with self._lock:
            return self._sum if self.family.kind == MetricFamily.HISTOGRAM else self._value


_METRICS_LOCK = threading.RLock()
#: Every custom metric family created by a model, by name.
METRIC_FAMILIES: dict[str, MetricFamily] = {}
