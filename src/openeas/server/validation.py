"""Checks of an inference request against the model's config, with Triton's messages."""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from openeas.protocol import datatypes
from openeas.protocol.errors import InvalidArgument
from openeas.protocol.types import InferRequest
from openeas.server.repository.config import ModelConfig


def _dims_match(expected: list[int], shape: list[int]) -> bool:
    if len(expected) != len(shape):
        return False
    return all(e == -1 or e == s for e, s in zip(expected, shape, strict=True))


def validate_request(request: InferRequest, config: ModelConfig) -> int:
    """Validate inputs and requested outputs; return the request's batch size.

    Inputs whose config has ``reshape`` are reshaped in place to what the model expects.
    """
    model = config.name
    inputs = {tensor.name: tensor for tensor in config.input}
    batched = config.max_batch_size > 0
    batch_size = 1
    seen_batch: int | None = None
    for tensor in request.inputs:
        spec = inputs.get(tensor.name)
        if spec is None:
            raise InvalidArgument(
                f"unexpected inference input '{tensor.name}' for model '{model}'"
            )
        expected_type = datatypes.config_to_triton(mc.DataType.Name(spec.data_type))
        if tensor.datatype != expected_type:
            raise InvalidArgument(
                f"inference input '{tensor.name}' data-type is '{tensor.datatype}', but model "
                f"'{model}' expects '{expected_type}'"
            )
        shape = list(tensor.shape)
        dims = list(spec.dims)
        if batched:
            if not shape:
                raise InvalidArgument(
                    f"inference input '{tensor.name}' for model '{model}' has no batch dimension"
                )
            this_batch = shape[0]
            if seen_batch is not None and this_batch != seen_batch:
                raise InvalidArgument(
                    f"input '{tensor.name}' batch size does not match other inputs for '{model}'"
                )
            seen_batch = this_batch
            if this_batch < 1 or this_batch > config.max_batch_size:
                raise InvalidArgument(
                    f"inference request batch-size must be <= {config.max_batch_size} for "
                    f"'{model}'"
                )
            check = shape[1:]
        else:
            check = shape
        if not _dims_match(dims, check) and not (
            spec.HasField("reshape") and _dims_match(list(spec.reshape.shape), check)
        ):
            expected = ([-1] if batched else []) + dims
            raise InvalidArgument(
                f"unexpected shape for input '{tensor.name}' for model '{model}'. "
                f"Expected {expected}, got {shape}"
            )
        if spec.HasField("reshape"):
            target = ([shape[0]] if batched else []) + list(spec.reshape.shape)
            tensor.data = tensor.data.reshape(target)
            tensor.shape = list(tensor.data.shape)
    if seen_batch is not None:
        batch_size = seen_batch

    given = {tensor.name for tensor in request.inputs}
    required = [t.name for t in config.input if not t.optional]
    missing = [name for name in required if name not in given]
    if missing:
        raise InvalidArgument(
            f"expected {len(required)} inputs but got {len(given)} inputs for model '{model}'. "
            f"Got input(s) {sorted(given)}, but missing required input(s) {missing}. "
            "Please provide all required input(s)."
        )
    if request.outputs:
        known = {t.name for t in config.output}
        for output in request.outputs:
            if output.name not in known:
                raise InvalidArgument(
                    f"unexpected inference output '{output.name}' for model '{model}'"
                )
    return batch_size
