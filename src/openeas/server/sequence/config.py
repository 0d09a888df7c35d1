"""``sequence_batching`` of a model config, checked and turned into plain settings.

:func:`sequence_settings` validates the section (a bad one fails the model's load with a
message naming the field) and resolves everything the scheduler needs per request: the
strategy and its batching knobs, the control inputs with their false/true values, and the
implicit state tensors with their initial values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from openeas.protocol import datatypes
from openeas.protocol.errors import InvalidArgument
from openeas.server.repository.config import ModelConfig

#: Triton's default ``max_sequence_idle_microseconds``.
DEFAULT_IDLE_US = 1_000_000

_Control = mc.ModelSequenceBatching.Control
START, END, READY, CORRID = (
    _Control.CONTROL_SEQUENCE_START,
    _Control.CONTROL_SEQUENCE_END,
    _Control.CONTROL_SEQUENCE_READY,
    _Control.CONTROL_SEQUENCE_CORRID,
)
_BOOLEAN_KINDS = (START, END, READY)
_CORRID_TYPES = ("TYPE_UINT64", "TYPE_INT64", "TYPE_UINT32", "TYPE_INT32", "TYPE_STRING")


@dataclass(frozen=True, slots=True)
class ControlSpec:
    """One control input the server fills in: its tensor name, kind and values."""

    name: str
    kind: int
    #: Triton datatype of the tensor ("INT32", "FP32", "BOOL"; CORRID: its data_type).
    datatype: str
    #: (false, true) for START/END/READY; unused for CORRID.
    values: tuple[object, object] = (0, 1)


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One implicit state: the model input fed with the model output of the last step."""

    input_name: str
    output_name: str
    datatype: str
    dims: tuple[int, ...]
    #: The state at sequence start, without the batch dimension.
    initial: np.ndarray


@dataclass(frozen=True, slots=True)
class SequenceSettings:
    """Everything the sequence scheduler reads from ``sequence_batching``."""

    #: "direct" or "oldest".
    strategy: str
    #: Sequences bound to one instance at a time (direct: its batch slots; oldest:
    #: ``max_candidate_sequences``).
    slots_per_instance: int
    #: Largest batch one execution may hold (1 for models without batching).
    max_batch: int
    delay_ns: int = 0
    #: direct: fraction of the slots that must be ready to execute before the delay ends.
    min_slot_utilization: float = 0.0
    #: oldest: ``preferred_batch_size`` values.
    preferred: frozenset[int] = frozenset()
    preserve_ordering: bool = False
    idle_ns: int = DEFAULT_IDLE_US * 1000
    controls: tuple[ControlSpec, ...] = ()
    states: tuple[StateSpec, ...] = field(default_factory=tuple)

    @property
    def corrid(self) -> ControlSpec | None:
        for control in self.controls:
            if control.kind == CORRID:
                return control
        return None


def _fail(model: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"model '{model}': sequence_batching {message}")


def _datatype(model: str, what: str, data_type: int) -> str:
    if data_type == mc.TYPE_INVALID:
        raise _fail(model, f"{what} must specify 'data_type'")
    return datatypes.config_to_triton(mc.DataType.Name(data_type))


def _control(model: str, name: str, control: mc.ModelSequenceBatching.Control) -> ControlSpec:
    kind_name = _Control.Kind.Name(control.kind)
    if control.kind == CORRID:
        if control.int32_false_true or control.fp32_false_true or control.bool_false_true:
            raise _fail(
                model, f"control '{kind_name}' of input '{name}' takes no *_false_true values"
            )
        type_name = mc.DataType.Name(control.data_type)
        if type_name not in _CORRID_TYPES:
            raise _fail(
                model,
                f"control '{kind_name}' of input '{name}' must set 'data_type' to one of "
                f"{', '.join(_CORRID_TYPES)}, got {type_name}",
            )
        return ControlSpec(name, control.kind, datatypes.config_to_triton(type_name))
    given = [
        (values, datatype)
        for values, datatype in (
            (list(control.int32_false_true), "INT32"),
            (list(control.fp32_false_true), "FP32"),
            (list(control.bool_false_true), "BOOL"),
        )
        if values
    ]
    if len(given) != 1:
        raise _fail(
            model,
            f"control '{kind_name}' of input '{name}' must set exactly one of "
            "int32_false_true, fp32_false_true, bool_false_true",
        )
    values, datatype = given[0]
    if len(values) != 2:
        raise _fail(
            model,
            f"control '{kind_name}' of input '{name}' must give 2 values (false, true), "
            f"got {len(values)}",
        )
    return ControlSpec(name, control.kind, datatype, (values[0], values[1]))


def _controls(config: ModelConfig) -> tuple[ControlSpec, ...]:
    model = config.name
    seq = config.sequence_batching
    inputs = {io.name for io in config.input}
    seen_kinds: set[int] = set()
    seen_names: set[str] = set()
    controls: list[ControlSpec] = []
    for control_input in seq.control_input:
        name = control_input.name
        if not name:
            raise _fail(model, "control_input must specify 'name'")
        if name in seen_names:
            raise _fail(model, f"control input '{name}' is declared twice")
        if name in inputs:
            raise _fail(model, f"control input '{name}' is also a model input")
        if len(control_input.control) != 1:
            raise _fail(
                model,
                f"control input '{name}' must have exactly one control, "
                f"got {len(control_input.control)}",
            )
        spec = _control(model, name, control_input.control[0])
        if spec.kind in seen_kinds:
            raise _fail(model, f"control '{_Control.Kind.Name(spec.kind)}' is given more than once")
        seen_kinds.add(spec.kind)
        seen_names.add(name)
        controls.append(spec)
    return tuple(controls)


def control_specs(config: ModelConfig) -> tuple[ControlSpec, ...]:
    """The model's control inputs (none without ``sequence_batching``); for backends,
    which feed them to the framework next to the config's inputs."""
    return _controls(config) if config.HasField("sequence_batching") else ()


def _initial_state(
    model: str, state: mc.ModelSequenceBatching.State, datatype: str, model_dir: Path | None
) -> np.ndarray:
    dims = tuple(int(d) for d in state.dims)
    dtype = datatypes.to_numpy_dtype(datatype)
    if len(state.initial_state) > 1:
        raise _fail(model, f"state '{state.input_name}' may have only one initial_state")
    if not state.initial_state:
        if any(d < 0 for d in dims):
            raise _fail(
                model,
                f"state '{state.input_name}' has variable dims {list(dims)}; give it an "
                "'initial_state' with fixed dims",
            )
        return _zeros(dims, dtype)
    init = state.initial_state[0]
    init_type = _datatype(model, f"initial_state of state '{state.input_name}'", init.data_type)
    if init_type != datatype:
        raise _fail(
            model,
            f"initial_state of state '{state.input_name}' has data_type "
            f"{datatypes.triton_to_config(init_type)}, the state has "
            f"{datatypes.triton_to_config(datatype)}",
        )
    init_dims = tuple(int(d) for d in init.dims)
    if any(d < 0 for d in init_dims):
        raise _fail(model, f"initial_state of state '{state.input_name}' must have fixed dims")
    kind = init.WhichOneof("state_data")
    if kind == "data_file":
        if model_dir is None:
            raise _fail(model, "initial_state data_file needs the model directory")
        path = model_dir / "initial_state" / init.data_file
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise _fail(
                model,
                f"initial_state of state '{state.input_name}': cannot read {path}: {exc.strerror}",
            ) from None
        return _from_file(model, state.input_name, raw, init_dims, datatype)
    return _zeros(init_dims, dtype)


def _zeros(dims: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if dtype == np.object_:
        return np.full(dims, b"", dtype=np.object_)
    return np.zeros(dims, dtype=dtype)


def _from_file(
    model: str, name: str, raw: bytes, dims: tuple[int, ...], datatype: str
) -> np.ndarray:
    count = datatypes.element_count(dims)
    try:
        if datatype == "BYTES":
            array = datatypes.deserialize_bytes(raw, count)
        else:
            array = np.frombuffer(raw, dtype=datatypes.to_numpy_dtype(datatype))
        if array.size != count:
            raise ValueError(f"holds {array.size} elements, dims {list(dims)} need {count}")
        return array.reshape(dims).copy()
    except (ValueError, InvalidArgument) as exc:
        raise _fail(model, f"initial_state data_file of state '{name}': {exc}") from None


def _states(config: ModelConfig, model_dir: Path | None) -> tuple[StateSpec, ...]:
    model = config.name
    inputs = {io.name for io in config.input}
    outputs = {io.name for io in config.output}
    seen: set[str] = set()
    states: list[StateSpec] = []
    for state in config.sequence_batching.state:
        if not state.input_name or not state.output_name:
            raise _fail(model, "state must specify 'input_name' and 'output_name'")
        for name, taken in ((state.input_name, inputs), (state.output_name, outputs)):
            if name in taken:
                raise _fail(model, f"state tensor '{name}' is also a model input or output")
            if name in seen:
                raise _fail(model, f"state tensor '{name}' is declared twice")
            seen.add(name)
        datatype = _datatype(model, f"state '{state.input_name}'", state.data_type)
        if not state.dims:
            raise _fail(model, f"state '{state.input_name}' must specify 'dims'")
        dims = tuple(int(d) for d in state.dims)
        if any(d < -1 or d == 0 for d in dims):
            raise _fail(
                model,
                f"state '{state.input_name}' has invalid dims {list(dims)}: each dim must "
                "be -1 or a positive number",
            )
        initial = _initial_state(model, state, datatype, model_dir)
        if len(initial.shape) != len(dims) or any(
            d != -1 and d != s for d, s in zip(dims, initial.shape, strict=True)
        ):
            raise _fail(
                model,
                f"initial_state of state '{state.input_name}' has dims "
                f"{list(initial.shape)}, which do not match the state dims {list(dims)}",
            )
        states.append(StateSpec(state.input_name, state.output_name, datatype, dims, initial))
    return tuple(states)


def sequence_settings(config: ModelConfig, model_dir: Path | None = None) -> SequenceSettings:
    """Check ``config.sequence_batching`` and resolve it (raises InvalidArgument).

    ``model_dir`` is where ``initial_state { data_file }`` files are read from
    (``<model_dir>/initial_state/<file>``).
    """
    model = config.name
    seq = config.sequence_batching
    max_batch = max(int(config.max_batch_size), 1)
    idle_us = seq.max_sequence_idle_microseconds or DEFAULT_IDLE_US
    common = {
        "idle_ns": idle_us * 1000,
        "controls": _controls(config),
        "states": _states(config, model_dir),
    }
    if seq.WhichOneof("strategy_choice") == "oldest":
        oldest = seq.oldest
        if oldest.max_candidate_sequences <= 0:
            raise _fail(model, "oldest.max_candidate_sequences must be > 0")
        for size in oldest.preferred_batch_size:
            if size <= 0 or size > max_batch:
                raise _fail(
                    model,
                    f"oldest.preferred_batch_size {size} must be in range [1, {max_batch}] "
                    "(max_batch_size)",
                )
        return SequenceSettings(
            strategy="oldest",
            slots_per_instance=oldest.max_candidate_sequences,
            max_batch=max_batch,
            delay_ns=oldest.max_queue_delay_microseconds * 1000,
            preferred=frozenset(oldest.preferred_batch_size),
            preserve_ordering=oldest.preserve_ordering,
            **common,
        )
    direct = seq.direct
    utilization = float(direct.minimum_slot_utilization)
    if not 0.0 <= utilization <= 1.0:
        raise _fail(
            model, f"direct.minimum_slot_utilization must be in [0, 1], got {utilization:g}"
        )
    return SequenceSettings(
        strategy="direct",
        slots_per_instance=max_batch,
        max_batch=max_batch,
        delay_ns=direct.max_queue_delay_microseconds * 1000,
        min_slot_utilization=utilization,
        **common,
    )
