"""The tensors the sequence batcher adds to a request: control inputs and implicit state.

A request of a sequence model reaches its backend as a copy of the client's request
with extra inputs: the control inputs (START, END, READY, CORRID) set for this step of
the sequence and, for each implicit state, the state input holding the state output of
the sequence's previous step (its initial value at sequence start).  The copy asks for
the state outputs as well; :func:`split_state` takes them out of the response again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from openeas.protocol import datatypes
from openeas.protocol.errors import InternalError, InvalidArgument
from openeas.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor
from openeas.server.sequence.config import (
    CORRID,
    END,
    READY,
    START,
    ControlSpec,
    SequenceSettings,
    StateSpec,
)

SequenceId = int | str

_INT_RANGES = {
    "UINT64": (0, 2**64 - 1),
    "INT64": (-(2**63), 2**63 - 1),
    "UINT32": (0, 2**32 - 1),
    "INT32": (-(2**31), 2**31 - 1),
}


def sequence_id_of(request: InferRequest, model: str) -> SequenceId:
    """The request's ``sequence_id`` (raises Triton's error when it has none)."""
    value = request.parameters.get("sequence_id", 0) if request.parameters else 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidArgument(
            f"request parameter 'sequence_id' must be an unsigned integer or a string, "
            f"got {value!r}"
        )
    if isinstance(value, int) and value < 0:
        raise InvalidArgument(
            f"request parameter 'sequence_id' must be an unsigned integer or a string, got {value}"
        )
    if value in (0, ""):
        raise InvalidArgument(
            f"inference request to model '{model}' must specify a non-zero or non-empty "
            "correlation ID"
        )
    return value


def flag(request: InferRequest, name: str) -> bool:
    """A boolean request parameter (``sequence_start`` / ``sequence_end``)."""
    value = request.parameters.get(name, False) if request.parameters else False
    if not isinstance(value, bool):
        raise InvalidArgument(f"request parameter '{name}' must be a boolean, got {value!r}")
    return value


def check_corrid(spec: ControlSpec | None, sequence_id: SequenceId, model: str) -> None:
    """Whether ``sequence_id`` fits the model's CORRID control input (if it has one)."""
    if spec is None:
        return
    if spec.datatype == "BYTES":
        if not isinstance(sequence_id, str):
            raise InvalidArgument(
                f"sequence ID of model '{model}' must be a string: its control input "
                f"'{spec.name}' (CONTROL_SEQUENCE_CORRID) has data_type TYPE_STRING, got "
                f"{sequence_id}"
            )
        return
    if isinstance(sequence_id, str):
        raise InvalidArgument(
            f"sequence ID of model '{model}' must be an integer: its control input "
            f"'{spec.name}' (CONTROL_SEQUENCE_CORRID) has data_type "
            f"{datatypes.triton_to_config(spec.datatype)}, got string '{sequence_id}'"
        )
    low, high = _INT_RANGES[spec.datatype]
    if not low <= sequence_id <= high:
        raise InvalidArgument(
            f"sequence ID {sequence_id} of model '{model}' does not fit the data_type "
            f"{datatypes.triton_to_config(spec.datatype)} of its control input '{spec.name}'"
        )


def _shape(batching: bool) -> tuple[int, ...]:
    return (1, 1) if batching else (1,)


def control_tensors(
    settings: SequenceSettings,
    batching: bool,
    *,
    start: bool,
    end: bool,
    ready: bool,
    sequence_id: SequenceId | None,
) -> list[Tensor]:
    """The control inputs of one request (``sequence_id`` None: an empty slot)."""
    flags = {START: start and ready, END: end and ready, READY: ready}
    shape = _shape(batching)
    tensors: list[Tensor] = []
    for spec in settings.controls:
        if spec.kind == CORRID:
            if spec.datatype == "BYTES":
                text = sequence_id if isinstance(sequence_id, str) else ""
                data = np.full(shape, text.encode(), dtype=np.object_)
            else:
                value = sequence_id if isinstance(sequence_id, int) else 0
                data = np.full(shape, value, dtype=datatypes.to_numpy_dtype(spec.datatype))
        else:
            value = spec.values[1] if flags[spec.kind] else spec.values[0]
            data = np.full(shape, value, dtype=datatypes.to_numpy_dtype(spec.datatype))
        tensors.append(Tensor(spec.name, spec.datatype, list(shape), data))
    return tensors


def state_tensor(spec: StateSpec, value: np.ndarray, batching: bool) -> Tensor:
    """The state input of one request from the sequence's state (no batch dimension)."""
    # A copy: a model may change its inputs in place; the sequence's state must not move.
    data = value[np.newaxis, ...].copy() if batching else value.copy()
    return Tensor(spec.input_name, spec.datatype, list(data.shape), data)


def backend_request(
    request: InferRequest,
    extra: Iterable[Tensor],
    settings: SequenceSettings,
    config_outputs: list[str],
) -> InferRequest:
    """A copy of ``request`` with ``extra`` inputs that also asks for the state outputs.

    The client's request object is left as it is (its front end encodes the response
    from it).
    """
    outputs = (
        list(request.outputs)
        if request.outputs
        else [RequestedOutput(name) for name in config_outputs]
    )
    outputs.extend(RequestedOutput(state.output_name) for state in settings.states)
    return InferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=[*request.inputs, *extra],
        outputs=outputs,
        parameters=request.parameters,
        binary_output=request.binary_output,
    )


def null_request(template: InferRequest, extra: Iterable[Tensor]) -> InferRequest:
    """A request for an empty slot of a direct batch: zero inputs shaped as ``template``'s.

    ``template`` is a backend request of the same batch; only its client inputs are
    copied (``extra`` brings this slot's controls and state).
    """
    extra = list(extra)
    names = {tensor.name for tensor in extra}
    inputs = [
        Tensor(t.name, t.datatype, list(t.shape), _zeros_like(t.data))
        for t in template.inputs
        if t.name not in names
    ]
    return InferRequest(
        model_name=template.model_name,
        model_version=template.model_version,
        inputs=[*inputs, *extra],
        outputs=template.outputs,
    )


def _zeros_like(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.object_:
        return np.full(array.shape, b"", dtype=np.object_)
    return np.zeros_like(array)


def split_state(
    response: InferResponse, states: tuple[StateSpec, ...], batching: bool, model: str
) -> dict[str, np.ndarray]:
    """Take the state outputs out of ``response``; return them by state input name.

    A state the model did not produce keeps its previous value (it is left out).
    """
    if not states:
        return {}
    found: Mapping[str, Tensor] = {t.name: t for t in response.outputs}
    values: dict[str, np.ndarray] = {}
    for spec in states:
        tensor = found.get(spec.output_name)
        if tensor is None:
            continue
        data = tensor.data
        if batching:
            if data.ndim == 0 or data.shape[0] != 1:
                raise InternalError(
                    f"state output '{spec.output_name}' of model '{model}' has shape "
                    f"{list(data.shape)}, expected a batch dimension of 1"
                )
            data = data[0]
        if data.dtype != spec.initial.dtype:
            data = data.astype(spec.initial.dtype)
        values[spec.input_name] = np.array(data, copy=True)
    drop = {spec.output_name for spec in states}
    response.outputs = [t for t in response.outputs if t.name not in drop]
    return values
