"""The ``onnxruntime`` backend: ONNX models (``platform: "onnxruntime_onnx"``) on ONNX Runtime.

It follows Triton's onnxruntime backend:

* The model file is ``<version>/model.onnx`` (or ``default_model_filename``); when that
  path is a directory, the model is ``<that directory>/model.onnx``.
* Session options come from the config ``parameters`` ``intra_op_thread_count``,
  ``inter_op_thread_count`` (0 = ORT's default), ``execution_mode`` (0 sequential,
  1 parallel), ``enable_mem_arena``, ``enable_mem_pattern``,
  every ORT session config entry ``session.*`` (e.g. ``session.intra_op.allow_spinning``,
  Triton's ``session.use_device_allocator_for_initializers``) and the run option
  ``memory.enable_memory_arena_shrinkage``; ``--backend-config=onnxruntime,<key>=<value>``
  with the same key gives the default when the config does not set it.
  ``optimization { graph { level } }`` maps as in Triton: -1 -> ORT_ENABLE_BASIC,
  1 -> ORT_ENABLE_EXTENDED, 2 -> ORT_DISABLE_ALL, anything else (0, unset) -> ORT_ENABLE_ALL.
  ``model_operations { op_library_filename }`` registers custom-op libraries.
* Auto-complete (non-strict servers) fills ``max_batch_size``, ``dynamic_batching`` and the
  inputs/outputs from the model; loading an instance (strict or not) validates the
  configured inputs and outputs against the model with Triton's error messages.

Instances run on the CPUExecutionProvider: ``gpu_execution_accelerator`` entries are
ignored and a ``cpu_execution_accelerator`` (OpenVINO) is rejected.  Not supported yet:
``share_session_between_instances``, ``enable-global-threadpool``, ragged batching.
BYTES tensors are ONNX string tensors; ORT's Python API carries them as ``str``, so their
bytes must be UTF-8.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tritonclient.grpc import model_config_pb2 as mc

from openeas.protocol import datatypes
from openeas.protocol.errors import (
    InferenceError,
    InternalError,
    InvalidArgument,
    Unavailable,
    Unsupported,
)
from openeas.protocol.types import InferRequest
from openeas.server.backends.base import (
    Backend,
    ExecResult,
    ExecTiming,
    ModelContext,
    ModelInstance,
)
from openeas.server.backends.framework import (
    ModelTensor,
    batch_dim_error,
    complete_io,
    datatype_error,
    default_max_batch_size,
    int_setting,
    optional_bool_setting,
    setting,
    shape_text,
)
from openeas.server.backends.tensor_batch import TensorBatcher
from openeas.server.repository.config import ModelConfig, default_model_filename

log = logging.getLogger(__name__)

#: ``NodeArg.type`` of ONNX tensors -> Triton datatype.
ONNX_TO_TRITON: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
#: Triton datatype -> ``NodeArg.type``.
TRITON_TO_ONNX: dict[str, str] = {v: k for k, v in ONNX_TO_TRITON.items()}

MODEL_FILENAME = "model.onnx"

_ORT_MESSAGE = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*(\d+)\s*:\s*\w+\s*:\s*(.*)$", re.S)


# -- model metadata ---------------------------------------------------------------------


class TensorInfo:
    """An input or output as the ONNX model declares it: datatype and dims (-1 = dynamic)."""

    __slots__ = ("name", "onnx_type", "dims")

    def __init__(self, name: str, onnx_type: str, dims: list[int]) -> None:
        self.name = name
        self.onnx_type = onnx_type
        self.dims = dims

    @classmethod
    def from_node_arg(cls, arg: Any) -> TensorInfo:
        shape = arg.shape if isinstance(arg.shape, list | tuple) else []
        dims = [d if isinstance(d, int) and d >= 0 else -1 for d in shape]
        return cls(arg.name, arg.type, dims)

    def model_tensor(self) -> ModelTensor:
        """This tensor as the framework helpers (auto-complete) take it."""
        return ModelTensor(self.name, self.datatype, tuple(self.dims), self.onnx_type)

    @property
    def is_tensor(self) -> bool:
        return self.onnx_type.startswith("tensor(")

    @property
    def datatype(self) -> str | None:
        """The Triton datatype, or None when Triton has no equivalent."""
        return ONNX_TO_TRITON.get(self.onnx_type)

    @property
    def config_type(self) -> str:
        """``TYPE_FP32`` style name (``TYPE_INVALID`` when there is none)."""
        datatype = self.datatype
        return datatypes.triton_to_config(datatype) if datatype else "TYPE_INVALID"


def _infos(args: Sequence[Any]) -> dict[str, TensorInfo]:
    return {arg.name: TensorInfo.from_node_arg(arg) for arg in args}


def resolve_model_path(version_dir: Path, filename: str) -> Path:
    """The ONNX file for ``filename`` in ``version_dir`` (``<dir>/model.onnx`` for a dir)."""
    path = version_dir / (filename or MODEL_FILENAME)
    if path.is_dir():
        path = path / MODEL_FILENAME
    return path


# -- options ----------------------------------------------------------------------------


def graph_optimization_level(level: int) -> ort.GraphOptimizationLevel:
    """Triton's ``optimization.graph.level`` -> ORT level (Triton's mapping)."""
    if level == -1:
        return ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if level == 1:
        return ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if level == 2:
        return ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def session_options(
    config: ModelConfig, backend_config: Mapping[str, str] | None = None
) -> tuple[ort.SessionOptions, ort.RunOptions]:
    """ORT session and run options for a model config, as Triton's backend builds them."""
    backend_config = backend_config or {}
    name = config.name
    options = ort.SessionOptions()
    options.graph_optimization_level = graph_optimization_level(
        int(config.optimization.graph.level) if config.HasField("optimization") else 0
    )

    mode = int_setting(config, backend_config, ("execution_mode",), 0, minimum=None)
    if mode not in (0, 1):
        raise InvalidArgument(
            f"unable to load model '{name}': invalid configuration value provided. Expected "
            f"values for execution_mode are 0 or 1 but got {mode}."
        )
    options.execution_mode = (
        ort.ExecutionMode.ORT_SEQUENTIAL if mode == 0 else ort.ExecutionMode.ORT_PARALLEL
    )

    intra = int_setting(config, backend_config, ("intra_op_thread_count",), 0, minimum=None)
    if intra > 0:
        options.intra_op_num_threads = intra
    inter = int_setting(config, backend_config, ("inter_op_thread_count",), 0, minimum=None)
    if inter > 0:
        options.inter_op_num_threads = inter

    arena = optional_bool_setting(config, backend_config, ("enable_mem_arena",))
    if arena is not None:
        options.enable_cpu_mem_arena = arena
    pattern = optional_bool_setting(config, backend_config, ("enable_mem_pattern",))
    if pattern is not None:
        options.enable_mem_pattern = pattern
    # ORT's session config entries ("session.*", e.g. session.intra_op.allow_spinning or
    # Triton's session.use_device_allocator_for_initializers) pass through as given.
    keys = {k for k in (*backend_config, *config.parameters) if k.startswith("session.")}
    for key in sorted(keys):
        found = setting(config, backend_config, key)
        if found is not None:
            value = found[1]
            try:
                options.add_session_config_entry(key, value)
            except Exception as exc:  # ORT raises its own Fail/InvalidArgument types
                raise InvalidArgument(
                    f"model '{config.name}': invalid onnxruntime session option {key}={value!r}: {exc}"
                ) from None

    for library in config.model_operations.op_library_filename:
        try:
            options.register_custom_ops_library(library)
        except Exception as exc:  # noqa: BLE001 - ORT raises several types
            raise InvalidArgument(
                f"unable to load model '{name}': failed to register custom op library "
                f"'{library}': {_ort_message(exc)}"
            ) from None

    accelerators = config.optimization.execution_accelerators
    for accelerator in accelerators.cpu_execution_accelerator:
        raise InvalidArgument(f"unknown Execution Accelerator '{accelerator.name}' is requested")

    run_options = ort.RunOptions()
    found = setting(config, backend_config, "memory.enable_memory_arena_shrinkage")
    if found is not None:
        run_options.add_run_config_entry(*found)
    return options, run_options


def _ort_message(exc: BaseException) -> str:
    """Triton's form of an ORT error: ``onnx runtime error <code>: <message>``."""
    text = str(exc).strip()
    match = _ORT_MESSAGE.match(text)
    if match:
        return f"onnx runtime error {match.group(1)}: {match.group(2).strip()}"
    return text or type(exc).__name__


def ort_error(exc: Exception) -> InferenceError:
    """Map an exception from ``InferenceSession.run`` to the error a request gets."""
    if isinstance(exc, InferenceError):
        return exc
    return InternalError(_ort_message(exc))


def _create_session(
    path: Path, options: ort.SessionOptions, model_name: str, instance_name: str
) -> ort.InferenceSession:
    if not path.is_file():
        raise Unavailable(f"unable to find '{path}' for model instance '{instance_name}'")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises several types
        raise InternalError(
            f"unable to load model '{model_name}': {_ort_message(exc)}"
        ) from None


# -- auto-complete ----------------------------------------------------------------------


def _supports_batching(infos: Sequence[TensorInfo]) -> bool:
    return all(len(info.dims) > 0 and info.dims[0] == -1 for info in infos)


def _check_tensor_types(model_name: str, infos: Sequence[TensorInfo]) -> None:
    for info in infos:
        if not info.is_tensor:
            raise Unsupported(
                f"unable to load model '{model_name}': unsupported ONNX type "
                f"'{info.onnx_type}' for I/O '{info.name}', expected a tensor"
            )


def auto_complete(
    config: ModelConfig,
    inputs: Sequence[TensorInfo],
    outputs: Sequence[TensorInfo],
    backend_config: Mapping[str, str] | None = None,
) -> None:
    """Triton's onnxruntime auto-complete, from the model's input and output metadata.

    Does nothing when the config already lists inputs (or batch inputs) and outputs.
    Otherwise: when every model input and output has a dynamic first dimension the model
    can batch, so an unset ``max_batch_size`` becomes ``default-max-batch-size`` (4) and,
    with ``max_batch_size > 1`` and no scheduler, ``dynamic_batching {}`` is added; a model
    that cannot batch with a non-zero ``max_batch_size`` is an error.  Missing inputs or
    outputs (all of them, as Triton does) are then filled with name, datatype and dims
    (without the batch dimension when ``max_batch_size > 0``).
    """
    backend_config = backend_config or {}
    input_cnt = len(config.input) + len(config.batch_input)
    output_cnt = len(config.output)
    if input_cnt > 0 and output_cnt > 0:
        log.info(
            "skipping model configuration auto-complete for '%s': inputs and outputs "
            "already specified", config.name,
        )
        return
    _check_tensor_types(config.name, [*inputs, *outputs])

    if _supports_batching([*inputs, *outputs]):
        if config.max_batch_size == 0:
            config.max_batch_size = default_max_batch_size(backend_config)
            log.warning(
                "autofilled max_batch_size to %d for model '%s' since batching is "
                "supported but no max_batch_size is specified in model configuration. "
                "Must specify max_batch_size to utilize autofill with a larger max batch "
                "size", config.max_batch_size, config.name,
            )
        if config.max_batch_size > 1 and config.WhichOneof("scheduling_choice") is None:
            config.dynamic_batching.SetInParent()
    elif config.max_batch_size != 0:
        raise InvalidArgument(
            f"autofill failed for model '{config.name}': model does not support batching "
            f"while non-zero max_batch_size is specified"
        )

    if input_cnt == 0:
        complete_io(config, config.input, [info.model_tensor() for info in inputs])
    if output_cnt == 0:
        complete_io(config, config.output, [info.model_tensor() for info in outputs])


# -- validation -------------------------------------------------------------------------


def _compare_dims(
    model_name: str,
    tensor_name: str,
    model_dims: Sequence[int],
    dims: Sequence[int],
    max_batch_size: int,
    compare_exact: bool,
) -> None:
    """Triton's ``CompareDimsSupported``: config dims against the model's dims."""
    if max_batch_size > 0:
        if len(model_dims) == 0 or model_dims[0] != -1:
            raise batch_dim_error(model_name, tensor_name, model_dims)
        full = [-1, *dims]
        ok = len(model_dims) == len(full) and all(
            m == f for m, f in zip(model_dims, full, strict=True) if compare_exact or m != -1
        )
        if not ok:
            raise InvalidArgument(
                f"model '{model_name}', tensor '{tensor_name}': the model expects "
                f"{len(model_dims)} dimensions (shape {shape_text(model_dims)}) but the model "
                f"configuration specifies {len(full)} dimensions (an initial batch dimension "
                f"because max_batch_size > 0 followed by the explicit tensor shape, making "
                f"complete shape {shape_text(full)})"
            )
    else:
        ok = len(model_dims) == len(dims) and all(
            m == d for m, d in zip(model_dims, dims, strict=True) if compare_exact or m != -1
        )
        if not ok:
            raise InvalidArgument(
                f"model '{model_name}', tensor '{tensor_name}': the model expects "
                f"{len(model_dims)} dimensions (shape {shape_text(model_dims)}) but the model "
                f"configuration specifies {len(dims)} dimensions (shape {shape_text(dims)})"
            )


def _check_io(
    config: ModelConfig,
    kind: str,
    io: Any,
    infos: Mapping[str, TensorInfo],
    compare_exact: bool,
) -> str | None:
    """Validate one configured input/output; return its name if the model sees a scalar."""
    name = config.name
    info = infos.get(io.name)
    if info is None:
        allowed = ", ".join(sorted(infos))
        raise InvalidArgument(
            f"unexpected inference {kind} '{io.name}', allowed {kind}s are: {allowed}"
        )
    config_type = mc.DataType.Name(io.data_type)
    datatype = datatypes.config_to_triton(config_type)
    if datatype not in TRITON_TO_ONNX:
        raise InternalError(
            f"unsupported datatype {config_type} for {kind} '{io.name}' for model '{name}'"
        )
    if TRITON_TO_ONNX[datatype] != info.onnx_type:
        raise datatype_error(config, kind, io.name, config_type, info.config_type)
    has_reshape = io.HasField("reshape")
    dims = list(io.reshape.shape) if has_reshape else list(io.dims)
    if info.dims:
        _compare_dims(name, io.name, info.dims, dims, config.max_batch_size, compare_exact)
        return None
    if any(d != 1 for d in dims):
        raise InvalidArgument(
            f"unable to load model '{name}', scalar tensor '{io.name}', should only provide "
            f"1 in the model configuration when the model doesn't support batching. Model "
            f"configuration provided: {shape_text(dims)}."
        )
    return None if has_reshape else io.name


def _expected_input_count(config: ModelConfig) -> int:
    count = sum(1 for io in config.input if not io.optional) + len(config.batch_input)
    if config.HasField("sequence_batching"):
        seq = config.sequence_batching
        count += len(seq.control_input) + len(seq.state)
    return count


def validate_config(
    config: ModelConfig,
    inputs: Mapping[str, TensorInfo],
    outputs: Mapping[str, TensorInfo],
    initializers: Mapping[str, TensorInfo] | None = None,
) -> tuple[list[str], list[str]]:
    """Check the configured inputs and outputs against the model, as Triton does on load.

    Returns the names of the configured inputs and outputs that the model declares as
    scalars (config ``dims: [1]`` without ``reshape``), which must be fed/read as scalars.
    """
    name = config.name
    expected = _expected_input_count(config)
    if len(inputs) != expected:
        raise InvalidArgument(
            f"unable to load model '{name}', configuration expects {expected} inputs, model "
            f"provides {len(inputs)}"
        )
    all_inputs = {**inputs, **(initializers or {})}
    scalar_inputs: list[str] = []
    for io in config.input:
        if io.optional and config.max_batch_size != 0:
            raise InvalidArgument(
                f"unable to load model '{name}', optional input '{io.name}' is not supported "
                f"for models that support batching"
            )
        if io.allow_ragged_batch:
            raise Unsupported(
                f"unable to load model '{name}': ragged batching of input '{io.name}' is not "
                f"supported by this server"
            )
        scalar = _check_io(config, "input", io, all_inputs, compare_exact=False)
        if scalar:
            scalar_inputs.append(scalar)
    scalar_outputs: list[str] = []
    for io in config.output:
        scalar = _check_io(config, "output", io, outputs, compare_exact=True)
        if scalar:
            scalar_outputs.append(scalar)
    return scalar_inputs, scalar_outputs


# -- the backend ------------------------------------------------------------------------


class OnnxRuntimeInstance(ModelInstance):
    """One ``InferenceSession`` that executes merged batches of requests."""

    # Pure computation; the scheduler runs it inline only when it measures fast.
    inline_capable = True

    def __init__(
        self,
        name: str,
        session: ort.InferenceSession,
        run_options: ort.RunOptions,
        batcher: TensorBatcher,
        string_inputs: set[str],
    ) -> None:
        self.name = name
        self.session: ort.InferenceSession | None = session
        self.run_options = run_options
        self.batcher = batcher
        self._string_inputs = string_inputs

    def _prepare(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._string_inputs:
            return inputs
        for name in self._string_inputs.intersection(inputs):
            inputs[name] = _to_str_array(name, inputs[name])
        return inputs

    def _run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        session = self.session
        if session is None:
            raise Unavailable(f"model instance '{self.name}' has been unloaded")
        return session.run(output_names, inputs, self.run_options)

    def execute(self, requests: list[InferRequest], timing: ExecTiming) -> ExecResult:
        """Merge ``requests``, run the session once per batch and split the outputs."""
        return self.batcher.execute(
            requests, self._run, timing, prepare=self._prepare, on_error=ort_error
        )

    def finalize(self) -> None:
        self.session = None


def _to_str_array(name: str, array: np.ndarray) -> np.ndarray:
    """BYTES (object array of bytes) -> object array of str, which ORT's Python API takes."""
    if array.dtype.kind == "U":
        return array
    flat = array.reshape(-1)
    out = np.empty(flat.shape[0], dtype=np.object_)
    try:
        out[:] = [
            item.decode("utf-8") if isinstance(item, bytes | bytearray)
            else bytes(item).decode("utf-8") if isinstance(item, memoryview)
            else str(item)
            for item in flat
        ]
    except UnicodeDecodeError:
        raise InvalidArgument(
            f"input '{name}' holds bytes that are not valid UTF-8; the onnxruntime backend "
            f"only carries UTF-8 strings"
        ) from None
    return out.reshape(array.shape)


class OnnxRuntimeBackend(Backend):
    """Serves ONNX models with onnxruntime (``platform: "onnxruntime_onnx"``)."""

    name = "onnxruntime"

    def auto_complete_config(
        self, config: ModelConfig, model_dir: Path, version: int, backend_config: dict[str, str]
    ) -> None:
        """Fill ``max_batch_size``, ``dynamic_batching`` and the I/O from the ONNX model."""
        if (len(config.input) + len(config.batch_input)) > 0 and len(config.output) > 0:
            log.info(
                "skipping model configuration auto-complete for '%s': inputs and outputs "
                "already specified", config.name,
            )
            return
        path = resolve_model_path(Path(model_dir) / str(version), default_model_filename(config))
        options, _ = session_options(config, backend_config)
        # Only the metadata is needed: skip graph optimizations and extra threads.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        session = _create_session(path, options, config.name, config.name)
        auto_complete(
            config,
            list(_infos(session.get_inputs()).values()),
            list(_infos(session.get_outputs()).values()),
            backend_config,
        )

    def create_instance(
        self, context: ModelContext, instance_name: str, device_id: int
    ) -> OnnxRuntimeInstance:
        """Open an ``InferenceSession`` on the model and check it against the config."""
        config = context.config
        name = context.name or config.name
        path = resolve_model_path(context.version_dir, default_model_filename(config))
        options, run_options = session_options(config, context.backend_config)
        session = _create_session(path, options, name, instance_name)

        inputs = _infos(session.get_inputs())
        outputs = _infos(session.get_outputs())
        initializers = _infos(session.get_overridable_initializers())
        _check_tensor_types(name, [*inputs.values(), *outputs.values()])
        named = config
        if config.name != name:
            named = ModelConfig()
            named.CopyFrom(config)
            named.name = name
        scalar_inputs, scalar_outputs = validate_config(named, inputs, outputs, initializers)
        batcher = TensorBatcher(
            named,
            context.version,
            input_reshape={n: () for n in scalar_inputs},
            output_reshape={n: () for n in scalar_outputs},
        )
        all_inputs = {**inputs, **initializers}
        string_inputs = {n for n, info in all_inputs.items() if info.datatype == "BYTES"}
        log.info(
            "created onnxruntime session for instance '%s' of model '%s' version %s (%s)",
            instance_name, name, context.version, path,
        )
        return OnnxRuntimeInstance(instance_name, session, run_options, batcher, string_inputs)
