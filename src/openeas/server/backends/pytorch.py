"""The ``pytorch`` backend: TorchScript models (``platform: "pytorch_libtorch"``) on CPU torch.

It follows Triton's PyTorch (LibTorch) backend:

* The model is ``<version>/model.pt`` (or ``default_model_filename``), loaded with
  ``torch.jit.load``; TorchScript declares no tensor metadata, so the config must list
  the inputs and outputs (no auto-complete, as in Triton).
* Inputs reach ``forward`` by position.  Names of the form ``<name>__<index>``
  (``INPUT__0``) give the position; otherwise names equal to ``forward``'s argument names
  map onto those arguments; otherwise the config order is the position.
* Sequence control inputs (``sequence_batching.control_input``) must be named
  ``<name>__<index>`` (``START__1``), as in Triton; the index is their ``forward``
  position, next to the config's inputs.  Implicit state inputs take the position of
  their ``__<index>`` or of the ``forward`` argument of their name; state outputs are
  picked by their ``__<index>``.
* Outputs: ``forward`` may return a tensor, a tuple/list of tensors or a dict of tensors.
  Names ``<name>__<index>`` (``OUTPUT__0``) pick that element; a dict is read by name;
  otherwise the config order is the position.  A returned dtype other than the
  configured one is an error.
* Parameters: ``INTRA_OP_THREAD_COUNT`` (``torch.set_num_threads``) and
  ``INTER_OP_THREAD_COUNT`` (``torch.set_num_interop_threads``) are process-wide in torch,
  so as in Triton the first model that sets them wins; ``DISABLE_OPTIMIZED_EXECUTION``
  and ``INFERENCE_MODE`` (default true) as in Triton.  ``--backend-config=pytorch,...``
  with the same keys gives defaults.

BYTES tensors (TorchScript ``List[str]``) are not supported: such a model fails to load
with a message saying so.  Without torch installed, a PyTorch model fails to load with a
message naming ``pip install 'openeas[pytorch]'``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from openeas.protocol import datatypes
from openeas.protocol.errors import InferenceError, InternalError, InvalidArgument
from openeas.protocol.types import InferRequest
from openeas.server.backends.base import (
    Backend,
    ExecResult,
    ExecTiming,
    ModelContext,
    ModelInstance,
)
from openeas.server.backends.framework import (
    bool_setting,
    int_setting,
    named_config,
    require_io,
)
from openeas.server.backends.tensor_batch import TensorBatcher, config_datatype
from openeas.server.repository.config import ModelConfig, default_model_filename
from openeas.server.sequence.config import control_specs

log = logging.getLogger(__name__)

MODEL_FILENAME = "model.pt"
_INDEXED = re.compile(r"^(.*)__(\d+)$")

#: Triton datatype -> torch dtype (BYTES has none).
TRITON_TO_TORCH: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "BF16": torch.bfloat16,
}
TORCH_TO_TRITON: dict[torch.dtype, str] = {v: k for k, v in TRITON_TO_TORCH.items()}

# torch's thread pools are process-wide; remember what the first model asked for.
_threads_lock = threading.Lock()
_interop_set: int | None = None


def torch_error(exc: Exception) -> InferenceError:
    """A failure inside ``forward`` as an inference error (500, with torch's message)."""
    message = str(exc).strip().splitlines()
    return InternalError(f"pytorch: {message[-1] if message else type(exc).__name__}")


def positions(names: Sequence[str], forward_args: Sequence[str] | None) -> list[int]:
    """The ``forward`` position of each configured input (see the module docstring)."""
    indexed = [_INDEXED.match(n) for n in names]
    if names and all(indexed):
        # Checked with the control inputs' indices by input_order.
        return [int(m.group(2)) for m in indexed if m]
    if forward_args is not None and set(names) <= set(forward_args):
        return [forward_args.index(n) for n in names]
    return list(range(len(names)))


def control_positions(config: ModelConfig) -> dict[str, int]:
    """The ``forward`` position of each sequence control input, from its name.

    As in Triton, a control input must be named ``<name>__<index>`` (``START__1``); the
    index is its position among ``forward``'s arguments.
    """
    found: dict[str, int] = {}
    for spec in control_specs(config):
        match = _INDEXED.match(spec.name)
        if not match:
            raise InvalidArgument(
                f"input '{spec.name}' does not follow <name>__<index> naming convention."
            )
        if spec.datatype not in TRITON_TO_TORCH:
            raise InvalidArgument(
                f"input '{spec.name}' type '{datatypes.triton_to_config(spec.datatype)}' is "
                f"not supported by PyTorch."
            )
        found[spec.name] = int(match.group(2))
    return found


def _states(config: ModelConfig) -> list[Any]:
    if not config.HasField("sequence_batching"):
        return []
    for state in config.sequence_batching.state:
        datatype = config_datatype(state.data_type)
        if datatype not in TRITON_TO_TORCH:
            raise InvalidArgument(
                f"unsupported datatype {datatypes.triton_to_config(datatype)} for state "
                f"'{state.input_name}'"
            )
    return list(config.sequence_batching.state)


def state_positions(config: ModelConfig, forward_args: Sequence[str] | None) -> dict[str, int]:
    """The ``forward`` position of each implicit state input: its ``__<index>`` or, as
    in Triton, the position of the ``forward`` argument of that name."""
    found: dict[str, int] = {}
    for state in _states(config):
        name = state.input_name
        match = _INDEXED.match(name)
        if match:
            found[name] = int(match.group(2))
        elif forward_args is not None and name in forward_args:
            found[name] = list(forward_args).index(name)
        else:
            raise InvalidArgument(
                f"state input '{name}' must follow the <name>__<index> naming convention "
                f"or be named after an argument of forward"
            )
    return found


def input_order(config: ModelConfig, forward_args: Sequence[str] | None) -> list[str]:
    """Config inputs, control inputs and state inputs in ``forward``'s argument order."""
    names = [io.name for io in config.input]
    pairs = [*zip(names, positions(names, forward_args), strict=True)]
    pairs += control_positions(config).items()
    pairs += state_positions(config, forward_args).items()
    if sorted(p for _, p in pairs) != list(range(len(pairs))):
        raise InvalidArgument(
            f"inputs {[n for n, _ in pairs]} (control and state inputs included) take "
            f"forward positions {[p for _, p in pairs]}; they must be 0..{len(pairs) - 1}, "
            f"each once"
        )
    return [name for name, _ in sorted(pairs, key=lambda pair: pair[1])]


def output_map(config: ModelConfig) -> tuple[dict[str, int | str], dict[str, torch.dtype]]:
    """Each output's element of what ``forward`` returns, and its dtype.

    Config outputs by ``__<index>`` (all of them) or config order; implicit state
    outputs always by ``__<index>`` (Triton's rule).
    """
    names = [io.name for io in config.output]
    indexed = [_INDEXED.match(n) for n in names]
    index: dict[str, int | str] = {
        name: int(match.group(2)) if all(indexed) and match else position
        for position, (name, match) in enumerate(zip(names, indexed, strict=True))
    }
    dtypes = {io.name: TRITON_TO_TORCH[config_datatype(io.data_type)] for io in config.output}
    for state in _states(config):
        match = _INDEXED.match(state.output_name)
        if not match:
            raise InvalidArgument(
                f"state output '{state.output_name}' does not follow <name>__<index> naming "
                f"convention."
            )
        index[state.output_name] = int(match.group(2))
        dtypes[state.output_name] = TRITON_TO_TORCH[config_datatype(state.data_type)]
    return index, dtypes


def _forward_args(module: Any) -> list[str] | None:
    """``forward``'s argument names (without ``self``), when TorchScript tells them."""
    try:
        schema = module.forward.schema
    except (AttributeError, RuntimeError):
        return None
    return [a.name for a in schema.arguments if a.name != "self"]


def _required_args(module: Any) -> int:
    """How many of ``forward``'s arguments have no default value."""
    try:
        arguments = module.forward.schema.arguments
    except (AttributeError, RuntimeError):
        return 0
    return sum(1 for a in arguments if a.name != "self" and a.default_value is None)


def _to_torch(array: np.ndarray) -> torch.Tensor:
    if not array.flags.writeable:  # request buffers are read-only views
        array = array.copy()
    if array.dtype == datatypes.to_numpy_dtype("BF16"):
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _set_threads(config: ModelConfig, backend_config: Mapping[str, str]) -> None:
    global _interop_set
    intra = int_setting(config, backend_config, ("INTRA_OP_THREAD_COUNT",), 0)
    inter = int_setting(config, backend_config, ("INTER_OP_THREAD_COUNT",), 0)
    with _threads_lock:
        if intra > 0 and torch.get_num_threads() != intra:
            torch.set_num_threads(intra)
        if inter > 0 and _interop_set is None:
            try:
                torch.set_num_interop_threads(inter)
                _interop_set = inter
            except RuntimeError:  # torch allows it once, before inter-op work started
                _interop_set = torch.get_num_interop_threads()
        if inter > 0 and _interop_set != inter:
            log.warning(
                "model '%s' asks for INTER_OP_THREAD_COUNT=%d but torch's inter-op pool is "
                "already %d threads (it is process-wide and set once)",
                config.name,
                inter,
                _interop_set,
            )


class PyTorchInstance(ModelInstance):
    """One TorchScript module that executes merged batches of requests."""

    # Pure computation; the scheduler runs it inline only when it measures fast.
    inline_capable = True

    def __init__(
        self,
        name: str,
        module: Any,
        batcher: TensorBatcher,
        input_order: list[str],
        output_index: dict[str, int | str],
        output_dtypes: dict[str, torch.dtype],
        *,
        optimized: bool,
        inference_mode: bool,
    ) -> None:
        self.name = name
        self.module = module
        self.batcher = batcher
        self._input_order = input_order
        self._output_index = output_index
        self._output_dtypes = output_dtypes
        self._optimized = optimized
        self._inference_mode = inference_mode

    def _pick(self, result: Any, name: str) -> torch.Tensor:
        where = self._output_index[name]
        if isinstance(result, dict):
            key = name if name in result else where
            if key not in result:
                raise InternalError(
                    f"model '{self.batcher.model_name}' returned a dict without output "
                    f"'{name}' (keys: {sorted(map(str, result))})"
                )
            return result[key]
        if isinstance(result, torch.Tensor):
            if where != 0:
                raise InternalError(
                    f"model '{self.batcher.model_name}' returned one tensor; output "
                    f"'{name}' asks for element {where}"
                )
            return result
        if isinstance(result, tuple | list):
            if not isinstance(where, int) or where >= len(result):
                raise InternalError(
                    f"model '{self.batcher.model_name}' returned {len(result)} outputs; "
                    f"output '{name}' asks for element {where}"
                )
            return result[where]
        raise InternalError(
            f"model '{self.batcher.model_name}' returned {type(result).__name__}, expected tensors"
        )

    def _run(self, inputs: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
        module = self.module
        if module is None:
            raise InternalError(f"model instance '{self.name}' has been unloaded")
        args = [_to_torch(inputs[name]) for name in self._input_order]
        grad = torch.inference_mode() if self._inference_mode else torch.no_grad()
        with grad, torch.jit.optimized_execution(self._optimized):
            result = module(*args)
        outputs: list[np.ndarray] = []
        for name in output_names:
            tensor = self._pick(result, name)
            if not isinstance(tensor, torch.Tensor):
                raise InternalError(
                    f"output '{name}' of model '{self.batcher.model_name}' is a "
                    f"{type(tensor).__name__}, not a tensor"
                )
            expected = self._output_dtypes[name]
            if tensor.dtype != expected:
                raise InternalError(
                    f"unexpected datatype {TORCH_TO_TRITON.get(tensor.dtype, tensor.dtype)} "
                    f"for inference output '{name}', expecting "
                    f"{TORCH_TO_TRITON.get(expected, expected)}"
                )
            if tensor.dtype == torch.bfloat16:
                bits = tensor.detach().contiguous().view(torch.int16).numpy()
                outputs.append(bits.view(datatypes.to_numpy_dtype("BF16")))
            else:
                outputs.append(tensor.detach().contiguous().numpy())
        return outputs

    def execute(self, requests: list[InferRequest], timing: ExecTiming) -> ExecResult:
        """Merge ``requests``, run ``forward`` once per batch and split the outputs."""
        return self.batcher.execute(requests, self._run, timing, on_error=torch_error)

    def finalize(self) -> None:
        self.module = None


class PyTorchBackend(Backend):
    """Serves TorchScript models (``platform: "pytorch_libtorch"`` / ``backend: "pytorch"``)."""

    name = "pytorch"

    def create_instance(
        self, context: ModelContext, instance_name: str, device_id: int
    ) -> PyTorchInstance:
        """Load the TorchScript module and map the config's inputs and outputs onto it."""
        config = named_config(context.config, context.name)
        name = config.name
        require_io(config, "pytorch")
        for kind, ios in (("input", config.input), ("output", config.output)):
            for io in ios:
                datatype = config_datatype(io.data_type)
                if datatype not in TRITON_TO_TORCH:
                    raise InvalidArgument(
                        f"unable to load model '{name}': {kind} '{io.name}' has datatype "
                        f"{datatype}, which the pytorch backend does not support"
                    )
        path = Path(context.version_dir) / (default_model_filename(config) or MODEL_FILENAME)
        if path.is_dir():
            path = path / MODEL_FILENAME
        if not path.is_file():
            raise InvalidArgument(f"unable to load model '{name}': {path} does not exist")
        _set_threads(config, context.backend_config)
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()
            raise InvalidArgument(
                f"unable to load model '{name}': {path} is not a TorchScript model: "
                f"{first[0] if first else type(exc).__name__}"
            ) from None
        module.eval()

        forward_args = _forward_args(module)
        try:
            order = input_order(config, forward_args)
            output_index, output_dtypes = output_map(config)
        except InvalidArgument as exc:
            raise InvalidArgument(f"unable to load model '{name}': {exc}") from None
        required = _required_args(module)
        if forward_args is not None and not (required <= len(order) <= len(forward_args)):
            raise InvalidArgument(
                f"unable to load model '{name}': configuration expects {len(order)} "
                f"inputs, the model's forward takes {len(forward_args)} ({forward_args})"
            )

        optimized = not bool_setting(
            config, context.backend_config, ("DISABLE_OPTIMIZED_EXECUTION",), False
        )
        inference_mode = bool_setting(config, context.backend_config, ("INFERENCE_MODE",), True)
        log.info(
            "loaded TorchScript model for instance '%s' of model '%s' version %s (%s, "
            "forward args %s)",
            instance_name,
            name,
            context.version,
            path,
            forward_args,
        )
        return PyTorchInstance(
            instance_name,
            module,
            TensorBatcher(config, context.version),
            order,
            output_index,
            output_dtypes,
            optimized=optimized,
            inference_mode=inference_mode,
        )
