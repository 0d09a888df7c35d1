"""Helpers shared by the framework backends (TensorFlow, PyTorch).

They read backend settings from config ``parameters`` (falling back to
``--backend-config=<backend>,<key>=<value>``), check configured inputs and outputs against
what a framework model declares, and auto-complete a config from that declaration the way
Triton's backends do.  Nothing here imports a framework.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from openeas.protocol import datatypes
from openeas.protocol.errors import InvalidArgument
from openeas.server.repository.config import ModelConfig

log = logging.getLogger(__name__)

#: Default of ``--backend-config=<backend>,default-max-batch-size`` (as in Triton).
DEFAULT_MAX_BATCH_SIZE = 4

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class ModelTensor:
    """An input or output as a framework model declares it.

    ``datatype`` is the Triton datatype (None when Triton has no equivalent) and ``dims``
    the full shape with -1 for unknown sizes, or None when even the rank is unknown.
    """

    name: str
    datatype: str | None
    dims: tuple[int, ...] | None
    framework_type: str = ""


# -- settings ---------------------------------------------------------------------------


def setting(
    config: ModelConfig, backend_config: Mapping[str, str], *keys: str
) -> tuple[str, str] | None:
    """The first of ``keys`` set in config ``parameters``, else in the backend config.

    Returns ``(key, value)`` (value stripped) or None when neither sets any of them.
    """
    for key in keys:
        if key in config.parameters:
            return key, config.parameters[key].string_value.strip()
    for key in keys:
        value = backend_config.get(key)
        if value is not None:
            return key, str(value).strip()
    return None


def int_setting(
    config: ModelConfig,
    backend_config: Mapping[str, str],
    keys: Sequence[str],
    default: int,
    *,
    minimum: int | None = 0,
) -> int:
    """An integer setting (see :func:`setting`), at least ``minimum`` (None: any); a bad
    value is a load error naming it."""
    found = setting(config, backend_config, *keys)
    if found is None or found[1] == "":
        return default
    key, value = found
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or (minimum is not None and number < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise InvalidArgument(
            f"unable to load model '{config.name}': parameter '{key}' must be an integer"
            f"{bound}, got '{value}'"
        )
    return number


def bool_setting(
    config: ModelConfig, backend_config: Mapping[str, str], keys: Sequence[str], default: bool
) -> bool:
    """A boolean setting ("true"/"on"/"yes"/"1" or their opposites), else ``default``."""
    value = optional_bool_setting(config, backend_config, keys)
    return default if value is None else value


def optional_bool_setting(
    config: ModelConfig, backend_config: Mapping[str, str], keys: Sequence[str]
) -> bool | None:
    """A boolean setting, or None when it is not set (or empty); a bad value is a load
    error with Triton's message."""
    found = setting(config, backend_config, *keys)
    if found is None or found[1] == "":
        return None
    key, value = found
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise InvalidArgument(
        f"unable to load model '{config.name}': failed to convert '{value}' of parameter "
        f"'{key}' to boolean value"
    )


def default_max_batch_size(backend_config: Mapping[str, str]) -> int:
    """``--backend-config=<backend>,default-max-batch-size`` (4 when unset): the
    ``max_batch_size`` that auto-complete gives a model that can batch."""
    value = backend_config.get("default-max-batch-size", str(DEFAULT_MAX_BATCH_SIZE))
    try:
        return max(int(value), 0)
    except ValueError:
        raise InvalidArgument(
            f"invalid backend config value '{value}' for 'default-max-batch-size'"
        ) from None


# -- checking the config against the model ----------------------------------------------


def shape_text(dims: Sequence[int]) -> str:
    """A shape as Triton prints it in load errors: ``[-1,16]``."""
    return "[" + ",".join(str(int(d)) for d in dims) + "]"


def datatype_error(
    config: ModelConfig, kind: str, name: str, config_type: str, model_type: str
) -> InvalidArgument:
    """Triton's load error for an input/output whose datatype is not the model's."""
    return InvalidArgument(
        f"unable to load model '{config.name}', configuration expects datatype {config_type} "
        f"for {kind} '{name}', model provides {model_type}"
    )


def batch_dim_error(model: str, tensor: str, model_dims: Sequence[int]) -> InvalidArgument:
    """Triton's load error for a batching model whose tensor has no -1 first dimension."""
    return InvalidArgument(
        f"model '{model}', tensor '{tensor}': for the model to support batching the "
        f"shape should have at least 1 dimension and the first dimension must be -1; "
        f"but shape expected by the model is {shape_text(model_dims)}"
    )


def check_io(config: ModelConfig, kind: str, io: Any, tensor: ModelTensor) -> None:
    """Check one configured input/output against the model's declaration of it.

    Datatypes must be equal; when the model knows its rank, the configured shape (with
    the batch dimension in front when ``max_batch_size > 0``, ``reshape`` when given)
    must match it, -1 on either side matching any size.
    """
    name = config.name
    config_type = mc.DataType.Name(io.data_type)
    if tensor.datatype is not None and datatypes.config_to_triton(config_type) != tensor.datatype:
        raise datatype_error(
            config, kind, io.name, config_type, datatypes.triton_to_config(tensor.datatype)
        )
    if tensor.datatype is None:
        raise InvalidArgument(
            f"unable to load model '{name}': {kind} '{io.name}' has type "
            f"'{tensor.framework_type}', which has no Triton datatype"
        )
    if tensor.dims is None:
        return
    dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
    full = ([-1] if config.max_batch_size > 0 else []) + dims
    model = list(tensor.dims)
    if config.max_batch_size > 0 and (not model or model[0] != -1):
        raise batch_dim_error(name, io.name, model)
    if not model and dims == [1] and not io.HasField("reshape"):
        return  # a scalar described as dims [1], as Triton allows
    ok = len(model) == len(full) and all(
        m == c or m == -1 or c == -1 for m, c in zip(model, full, strict=True)
    )
    if not ok:
        raise InvalidArgument(
            f"model '{name}', tensor '{io.name}': the model expects {len(model)} dimensions "
            f"(shape {shape_text(model)}) but the model configuration specifies {len(full)} "
            f"dimensions (shape {shape_text(full)})"
        )


def check_control(config: ModelConfig, name: str, datatype: str, tensor: ModelTensor) -> None:
    """Check a sequence control input the model declares against what the server feeds.

    The sequence batcher feeds each control as ``datatype`` with dims ``[1]`` (behind the
    batch dimension when ``max_batch_size > 0``), as Triton does; -1 in the model's
    shape matches any size.
    """
    prefix = f"unable to load model '{config.name}', sequence control '{name}'"
    if tensor.datatype is not None and tensor.datatype != datatype:
        model_type = datatypes.triton_to_config(tensor.datatype)
        raise InvalidArgument(
            f"{prefix}: the model expects {model_type} but the model configuration "
            f"specifies data-type {datatypes.triton_to_config(datatype)}"
        )
    if tensor.dims is None:
        return
    full = [-1, 1] if config.max_batch_size > 0 else [1]
    model = list(tensor.dims)
    if len(model) != len(full) or any(m not in (c, -1) for m, c in zip(model, full, strict=True)):
        raise InvalidArgument(
            f"{prefix}: the model expects shape {shape_text(model)} but control inputs have "
            f"shape {shape_text(full)}"
        )


def named_config(config: ModelConfig, name: str) -> ModelConfig:
    """``config`` carrying the served model ``name`` (a copy only when they differ)."""
    if not name or config.name == name:
        return config
    named = ModelConfig()
    named.CopyFrom(config)
    named.name = name
    return named


def require_io(config: ModelConfig, backend: str) -> None:
    """A model whose backend cannot auto-complete must list inputs and outputs."""
    if not config.input or not config.output:
        raise InvalidArgument(
            f"unable to load model '{config.name}': the {backend} backend needs its inputs "
            f"and outputs listed in config.pbtxt (name, data_type, dims)"
        )


# -- auto-complete ----------------------------------------------------------------------


def complete_io(config: ModelConfig, field: Any, tensors: Sequence[ModelTensor]) -> None:
    for tensor in tensors:
        if tensor.datatype is None:
            raise InvalidArgument(
                f"unable to auto-complete model '{config.name}': type "
                f"'{tensor.framework_type}' of '{tensor.name}' has no Triton equivalent"
            )
        if tensor.dims is None:
            raise InvalidArgument(
                f"unable to auto-complete model '{config.name}': the rank of '{tensor.name}' "
                f"is unknown; list it in config.pbtxt"
            )
        io = field.add()
        io.name = tensor.name
        io.data_type = mc.DataType.Value(datatypes.triton_to_config(tensor.datatype))
        dims = tensor.dims[1:] if config.max_batch_size > 0 else tensor.dims
        if dims:
            io.dims.extend(dims)
        else:
            io.dims.append(1)
            if config.max_batch_size > 0:
                io.reshape.SetInParent()  # a scalar per batch item


def auto_complete(
    config: ModelConfig,
    inputs: Sequence[ModelTensor],
    outputs: Sequence[ModelTensor],
    backend_config: Mapping[str, str],
) -> None:
    """Fill ``max_batch_size``, ``dynamic_batching`` and missing inputs/outputs.

    As Triton does: nothing when the config lists inputs and outputs; when every model
    tensor has a variable first dimension the model can batch, so an unset
    ``max_batch_size`` becomes ``default-max-batch-size`` (4) and, above 1 and without a
    scheduler, ``dynamic_batching {}`` is added.
    """
    if config.input and config.output:
        return
    every = [*inputs, *outputs]
    batchable = bool(every) and all(t.dims and t.dims[0] == -1 for t in every)
    if batchable:
        if config.max_batch_size == 0:
            config.max_batch_size = default_max_batch_size(backend_config)
            log.warning(
                "autofilled max_batch_size to %d for model '%s'",
                config.max_batch_size,
                config.name,
            )
        if config.max_batch_size > 1 and config.WhichOneof("scheduling_choice") is None:
            config.dynamic_batching.SetInParent()
    elif config.max_batch_size != 0:
        raise InvalidArgument(
            f"autofill failed for model '{config.name}': model does not support batching "
            f"while non-zero max_batch_size is specified"
        )
    if not config.input:
        complete_io(config, config.input, inputs)
    if not config.output:
        complete_io(config, config.output, outputs)
