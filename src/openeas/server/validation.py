"""Checks of an inference request against the model's config, with Triton's messages.

A :class:`RequestValidator` is built once per loaded model version, so the per-request
work is a few dictionary lookups and tuple comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from openeas.protocol import datatypes
from openeas.protocol.errors import InvalidArgument
from openeas.protocol.types import InferRequest, RequestedOutput, Tensor
from openeas.server.repository.config import ModelConfig


@dataclass(frozen=True, slots=True)
class _InputSpec:
    datatype: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None
    fixed: bool  # no -1 in dims: the shape check is a tuple comparison


#: Triton's note after a shape mismatch for a model with batching (max_batch_size > 0).
_BATCH_NOTE = (
    "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension "
    "to be prepended to each input shape. If you want to specify the full shape including "
    "the batch dim in your input dims config, try setting max_batch_size to zero. See the "
    "model configuration docs for more info on max_batch_size."
)


def _dims_text(dims: list[int] | tuple[int, ...]) -> str:
    """A shape as Triton prints it: ``[-1,16]``."""
    return "[" + ",".join(str(int(d)) for d in dims) + "]"


def _names_text(names: list[str]) -> str:
    """Input names as Triton prints them: ``['A','B']``."""
    return "[" + ",".join(f"'{name}'" for name in names) + "]"


def shape_error(
    name: str, model: str, dims: tuple[int, ...], shape: list[int], batched: bool
) -> InvalidArgument:
    """Triton's error for an input whose shape does not match its config ``dims``."""
    expected = ([-1] if batched else []) + list(dims)
    return InvalidArgument(
        f"unexpected shape for input '{name}' for model '{model}'. Expected "
        f"{_dims_text(expected)}, got {_dims_text(shape)}. {_BATCH_NOTE if batched else ''}"
    )


def no_batch_dimension_error(name: str, model: str) -> InvalidArgument:
    return InvalidArgument(
        f"input '{name}' has no shape but model requires batch dimension for '{model}'"
    )


def missing_inputs_error(
    model: str, given: list[str], missing: list[str], required: int, total: int
) -> InvalidArgument:
    """Triton's error for a request without all of the model's required inputs."""
    count = (
        f"expected {total} inputs"
        if required == total
        else f"expected number of inputs between {required} and {total}"
    )
    return InvalidArgument(
        f"{count} but got {len(given)} inputs for model '{model}'. Got input(s) "
        f"{_names_text(given)}, but missing required input(s) {_names_text(missing)}. "
        "Please provide all required input(s)."
    )


def _dims_match(expected: tuple[int, ...], shape: tuple[int, ...] | list[int]) -> bool:
    if len(expected) != len(shape):
        return False
    return all(e == -1 or e == s for e, s in zip(expected, shape, strict=True))


class RequestValidator:
    """Validates requests for one model config."""

    def __init__(self, config: ModelConfig) -> None:
        self._model = config.name
        self._max_batch = config.max_batch_size
        self._inputs: dict[str, _InputSpec] = {}
        for spec in config.input:
            dims = tuple(spec.dims)
            self._inputs[spec.name] = _InputSpec(
                datatype=datatypes.config_to_triton(mc.DataType.Name(spec.data_type)),
                dims=dims,
                reshape=tuple(spec.reshape.shape) if spec.HasField("reshape") else None,
                fixed=-1 not in dims,
            )
        self._required = [t.name for t in config.input if not t.optional]
        self._outputs = frozenset(t.name for t in config.output)

    def __call__(self, request: InferRequest) -> int:
        """Validate inputs and requested outputs; return the request's batch size.

        Inputs whose config has ``reshape`` are reshaped in place to what the model expects.
        This runs per request: the passing path stays inline, each failure is a helper.
        """
        batched = self._max_batch > 0
        batch = 0  # 0 until the first input: every input's first dim must be the same
        for tensor in request.inputs:
            spec = self._inputs.get(tensor.name)
            if spec is None or tensor.datatype != spec.datatype:
                raise self._input_error(tensor, spec)
            shape = tensor.shape
            if batched:
                if not shape or not 0 < shape[0] <= self._max_batch or batch not in (0, shape[0]):
                    raise self._batch_error(tensor, batch)
                batch = shape[0]
                check = tuple(shape[1:])
            else:
                check = tuple(shape)
            if spec.reshape is not None:
                self._reshape(tensor, spec, check, batched)
            elif not (check == spec.dims if spec.fixed else _dims_match(spec.dims, check)):
                raise shape_error(tensor.name, self._model, spec.dims, list(shape), batched)
        if len(request.inputs) != len(self._required) or any(
            request.input(name) is None for name in self._required
        ):
            self._check_required(request)
        if request.outputs:
            self._check_outputs(request.outputs)
        return batch or 1

    def _input_error(self, tensor: Tensor, spec: _InputSpec | None) -> InvalidArgument:
        """An input the model does not have, or of another datatype."""
        if spec is None:
            return InvalidArgument(
                f"unexpected inference input '{tensor.name}' for model '{self._model}'"
            )
        return InvalidArgument(
            f"inference input '{tensor.name}' data-type is '{tensor.datatype}', but "
            f"model '{self._model}' expects '{spec.datatype}'"
        )

    def _batch_error(self, tensor: Tensor, batch: int) -> InvalidArgument:
        """No batch dimension, one unlike the other inputs', or one out of range."""
        if not tensor.shape:
            return no_batch_dimension_error(tensor.name, self._model)
        if batch not in (0, tensor.shape[0]):
            return InvalidArgument(
                f"input '{tensor.name}' batch size does not match other inputs for '{self._model}'"
            )
        return InvalidArgument(
            f"inference request batch-size must be <= {self._max_batch} for '{self._model}'"
        )

    def _reshape(
        self, tensor: Tensor, spec: _InputSpec, check: tuple[int, ...], batched: bool
    ) -> None:
        """An input with ``reshape``: it may match its dims or the reshape; the model gets
        the reshape (behind the batch dimension)."""
        assert spec.reshape is not None
        if not _dims_match(spec.dims, check) and not _dims_match(spec.reshape, check):
            raise shape_error(tensor.name, self._model, spec.dims, list(tensor.shape), batched)
        target = ([tensor.shape[0]] if batched else []) + list(spec.reshape)
        tensor.data = tensor.data.reshape(target)
        tensor.shape = list(tensor.data.shape)

    def _check_required(self, request: InferRequest) -> None:
        given = {tensor.name for tensor in request.inputs}
        missing = [name for name in self._required if name not in given]
        if missing:
            raise missing_inputs_error(
                self._model, sorted(given), missing, len(self._required), len(self._inputs)
            )

    def _check_outputs(self, outputs: list[RequestedOutput]) -> None:
        for output in outputs:
            if output.name not in self._outputs:
                raise InvalidArgument(
                    f"unexpected inference output '{output.name}' for model '{self._model}'"
                )
