"""Checks of an inference request against the model's config, with Triton's messages.

A :class:`RequestValidator` is built once per loaded model version, so the per-request
work is a few dictionary lookups and tuple comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from openeas.protocol import datatypes
from openeas.protocol.errors import InvalidArgument
from openeas.protocol.types import InferRequest
from openeas.server.repository.config import ModelConfig


@dataclass(frozen=True, slots=True)
class _InputSpec:
    datatype: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None
    fixed: bool  # no -1 in dims: the shape check is a tuple comparison


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
        """
        model = self._model
        batched = self._max_batch > 0
        seen_batch: int | None = None
        for tensor in request.inputs:
            spec = self._inputs.get(tensor.name)
            if spec is None:
                raise InvalidArgument(
                    f"unexpected inference input '{tensor.name}' for model '{model}'"
                )
            if tensor.datatype != spec.datatype:
                raise InvalidArgument(
                    f"inference input '{tensor.name}' data-type is '{tensor.datatype}', but "
                    f"model '{model}' expects '{spec.datatype}'"
                )
            shape = tensor.shape
            if batched:
                if not shape:
                    raise InvalidArgument(
                        f"inference input '{tensor.name}' for model '{model}' has no batch "
                        "dimension"
                    )
                this_batch = shape[0]
                if seen_batch is not None and this_batch != seen_batch:
                    raise InvalidArgument(
                        f"input '{tensor.name}' batch size does not match other inputs for "
                        f"'{model}'"
                    )
                seen_batch = this_batch
                if this_batch < 1 or this_batch > self._max_batch:
                    raise InvalidArgument(
                        f"inference request batch-size must be <= {self._max_batch} for "
                        f"'{model}'"
                    )
                check = tuple(shape[1:])
            else:
                check = tuple(shape)
            ok = check == spec.dims if spec.fixed else _dims_match(spec.dims, check)
            if not ok and not (spec.reshape is not None and _dims_match(spec.reshape, check)):
                expected = ([-1] if batched else []) + list(spec.dims)
                raise InvalidArgument(
                    f"unexpected shape for input '{tensor.name}' for model '{model}'. "
                    f"Expected {expected}, got {list(shape)}"
                )
            if spec.reshape is not None:
                target = ([shape[0]] if batched else []) + list(spec.reshape)
                tensor.data = tensor.data.reshape(target)
                tensor.shape = list(tensor.data.shape)

        if len(request.inputs) != len(self._required) or any(
            request.input(name) is None for name in self._required
        ):
            given = {tensor.name for tensor in request.inputs}
            missing = [name for name in self._required if name not in given]
            if missing:
                raise InvalidArgument(
                    f"expected {len(self._required)} inputs but got {len(given)} inputs for "
                    f"model '{model}'. Got input(s) {sorted(given)}, but missing required "
                    f"input(s) {missing}. Please provide all required input(s)."
                )
        if request.outputs:
            for output in request.outputs:
                if output.name not in self._outputs:
                    raise InvalidArgument(
                        f"unexpected inference output '{output.name}' for model '{model}'"
                    )
        return seen_batch if seen_batch is not None else 1

