"""Merge a batch of requests into one set of framework inputs and split the results.

Framework backends (ONNX Runtime now, TensorFlow and PyTorch later) all follow the same
pattern: the scheduler hands an instance a list of :class:`InferRequest` that it has
already checked to be batchable together; the backend concatenates every input along
the batch dimension, runs the framework once, and slices each output back per request.
:class:`TensorBatcher` implements that pattern once, from the model configuration:

* ``max_batch_size > 0``: the first dimension of every input and output is the batch
  dimension.  Inputs are concatenated along axis 0 and outputs are split along axis 0 by
  each request's batch size.  A single request is passed through without a copy and its
  outputs are returned as views.
* ``max_batch_size == 0``: the model has no batch dimension; every request runs alone.
* ``reshape``: an input's config ``dims`` are what the client sends, its ``reshape`` what
  the model sees; an output's ``reshape`` is what the model produces and its ``dims``
  what the client sees.  Variable (-1) dimensions map onto each other in order, as in
  Triton.  The batch dimension is kept in front when ``max_batch_size > 0``.
* Outputs are returned only when requested (``InferRequest.outputs``; None means every
  config output), with the config's datatype: a different numeric dtype from the
  framework is cast, and BYTES outputs become ``object`` arrays of ``bytes``.

A backend supplies a ``run(inputs, output_names) -> list of arrays`` callable and calls
:meth:`TensorBatcher.execute`, which also fills the :class:`ExecTiming` parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from openeas.protocol import datatypes
from openeas.protocol.errors import InferenceError, InternalError, InvalidArgument
from openeas.protocol.types import InferRequest, InferResponse, Tensor
from openeas.server.backends.base import ExecResult, ExecTiming
from openeas.server.repository.config import ModelConfig
from openeas.server.validation import missing_inputs_error, no_batch_dimension_error, shape_error

#: ``run(inputs, output_names)`` returns one array per name, in the order of the names.
RunFn = Callable[[dict[str, np.ndarray], list[str]], Sequence[np.ndarray]]
#: Turns the merged (model-side) inputs into what the framework takes, e.g. BYTES -> str.
PrepareFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
#: Maps an exception raised by ``run`` to the error that every request of the run gets.
ErrorFn = Callable[[Exception], InferenceError]


@dataclass(frozen=True, slots=True)
class IOSpec:
    """One configured input or output.

    ``dims`` are the config dims (without the batch dimension), what the client sends or
    receives; ``reshape`` is what the model sees (also without the batch dimension), or
    None when the model sees ``dims``.
    """

    name: str
    datatype: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None
    optional: bool = False

    @property
    def dtype(self) -> np.dtype:
        return datatypes.to_numpy_dtype(self.datatype)

    @property
    def model_dims(self) -> tuple[int, ...]:
        """The dims the model sees (``reshape`` when there is one, else ``dims``)."""
        return self.dims if self.reshape is None else self.reshape

    def reshape_accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether a tensor of ``shape`` (after any batch dimension) fits the reshape, when
        there is one (-1 matches any size)."""
        return self.reshape is not None and _dims_match(self.reshape, shape)


_NUMPY_DTYPES = {
    name: datatypes.to_numpy_dtype(name)
    for name in ("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                 "INT64", "FP16", "FP32", "FP64", "BF16")
}


def config_datatype(data_type: int) -> str:
    """The Triton datatype (``"FP32"``) of a ``model_config.proto`` DataType enum value."""
    return datatypes.config_to_triton(mc.DataType.Name(data_type))


def _spec(io: mc.ModelInput | mc.ModelOutput, optional: bool = False) -> IOSpec:
    reshape = tuple(int(d) for d in io.reshape.shape) if io.HasField("reshape") else None
    return IOSpec(
        name=io.name,
        datatype=config_datatype(io.data_type),
        dims=tuple(int(d) for d in io.dims),
        reshape=reshape,
        optional=optional,
    )


def input_specs(config: ModelConfig) -> dict[str, IOSpec]:
    """The config's inputs by name, in config order."""
    return {io.name: _spec(io, io.optional) for io in config.input}


def output_specs(config: ModelConfig) -> dict[str, IOSpec]:
    """The config's outputs by name, in config order."""
    return {io.name: _spec(io) for io in config.output}


def map_shape(
    shape: Sequence[int], src_dims: Sequence[int], dst_dims: Sequence[int], batched: bool
) -> tuple[int, ...]:
    """Map an actual ``shape`` laid out as ``src_dims`` onto ``dst_dims``.

    The i-th variable (-1) dimension of ``src_dims`` fills the i-th variable dimension of
    ``dst_dims`` (Triton's rule for ``reshape``); a leading batch dimension is kept when
    ``batched``.  When ``shape`` does not follow ``src_dims`` (or the variable dimensions
    do not line up) the result holds one -1 for numpy to infer, or raises InvalidArgument.
    """
    prefix = tuple(shape[:1]) if batched else ()
    body = shape[1:] if batched else shape
    if len(body) == len(src_dims):
        variable = [int(d) for d, c in zip(body, src_dims, strict=True) if c == -1]
        if len(variable) == sum(1 for d in dst_dims if d == -1):
            it = iter(variable)
            return prefix + tuple(next(it) if d == -1 else int(d) for d in dst_dims)
    if sum(1 for d in dst_dims if d == -1) <= 1:
        return prefix + tuple(int(d) for d in dst_dims)
    raise InvalidArgument(
        f"unable to reshape {list(shape)} from {list(src_dims)} to {list(dst_dims)}"
    )


def _reshape(array: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    if array.shape == shape:
        return array
    try:
        return array.reshape(shape)
    except ValueError:
        raise InvalidArgument(
            f"{what}: cannot reshape tensor of shape {list(array.shape)} to {list(shape)}"
        ) from None


def as_bytes_array(array: np.ndarray) -> np.ndarray:
    """An ``object`` array of ``bytes`` with the same shape (str is encoded as UTF-8).

    Returns ``array`` itself when it already is one.
    """
    if array.dtype == np.object_:
        flat = array.reshape(-1)
        if all(type(item) is bytes for item in flat):
            return array
    else:
        flat = array.reshape(-1)
    items = [
        item.encode("utf-8") if isinstance(item, str)
        else bytes(item) if isinstance(item, bytes | bytearray | memoryview | np.bytes_)
        else str(item).encode("utf-8")
        for item in flat
    ]
    out = np.empty(len(items), dtype=np.object_)
    out[:] = items
    return out.reshape(array.shape)


def _dims_match(dims: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether ``shape`` fits config ``dims`` (-1 matches any size)."""
    return len(dims) == len(shape) and all(
        c == -1 or c == d for c, d in zip(dims, shape, strict=True)
    )


def _cast(array: np.ndarray, spec: IOSpec) -> np.ndarray:
    """``array`` in the datatype of ``spec`` (no copy when it already is)."""
    if spec.datatype == "BYTES":
        return as_bytes_array(array)
    dtype = _NUMPY_DTYPES.get(spec.datatype) or spec.dtype
    if array.dtype == dtype:
        return array
    if array.dtype == np.object_ or array.dtype.kind in ("U", "S"):
        raise InternalError(
            f"output '{spec.name}' holds strings but the configuration expects {spec.datatype}"
        )
    return array.astype(dtype)


@dataclass(slots=True)
class Batch:
    """Merged inputs of some requests, as the model sees them."""

    #: input name -> array with the model's shape (batch dimension first when batching).
    inputs: dict[str, np.ndarray]
    #: the batch size of each request (1 each when the model does not batch).
    batch_sizes: list[int]
    #: outputs to compute: the union of what the requests asked for, in config order.
    output_names: list[str]
    #: the outputs each request asked for, in the order it asked for them.
    requested: list[list[str]] = field(default_factory=list)

    @property
    def total_batch_size(self) -> int:
        return sum(self.batch_sizes)


class TensorBatcher:
    """Merges requests into framework inputs and splits framework outputs, per config.

    ``input_reshape`` / ``output_reshape`` override the model-side dims of some tensors
    (e.g. a scalar ONNX tensor that the config describes as ``dims: [1]``); they take the
    place of the config ``reshape`` for those tensors.
    """

    def __init__(
        self,
        config: ModelConfig,
        model_version: str | int = "",
        *,
        input_reshape: Mapping[str, Sequence[int]] | None = None,
        output_reshape: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        self.model_name = config.name
        self.model_version = str(model_version)
        self.max_batch_size = int(config.max_batch_size)
        self.batching = self.max_batch_size > 0
        self.inputs = input_specs(config)
        self.outputs = output_specs(config)
        for name, dims in (input_reshape or {}).items():
            spec = self.inputs[name]
            self.inputs[name] = IOSpec(spec.name, spec.datatype, spec.dims, tuple(dims),
                                       spec.optional)
        for name, dims in (output_reshape or {}).items():
            spec = self.outputs[name]
            self.outputs[name] = IOSpec(spec.name, spec.datatype, spec.dims, tuple(dims))
        self.required_inputs = [s.name for s in self.inputs.values() if not s.optional]
        # Inputs that a scheduler adds and the config does not list (sequence controls
        # and implicit state); they are passed through as they come.
        self.extra_inputs: set[str] = set()
        if config.HasField("sequence_batching"):
            seq = config.sequence_batching
            self.extra_inputs.update(c.name for c in seq.control_input)
            self.extra_inputs.update(s.input_name for s in seq.state)
        self.all_outputs = list(self.outputs)
        if config.HasField("sequence_batching"):
            # Implicit state outputs: produced when the sequence batcher asks for them,
            # never part of "every output".
            for state in config.sequence_batching.state:
                self.outputs.setdefault(state.output_name, IOSpec(
                    state.output_name, config_datatype(state.data_type),
                    tuple(int(d) for d in state.dims)))
        self._reshaped_inputs = {n for n, spec in self.inputs.items() if spec.reshape is not None}

    # -- per-request checks -------------------------------------------------------------

    def requested_outputs(self, request: InferRequest) -> list[str]:
        """The output names ``request`` asked for (every config output when None)."""
        if request.outputs is None:
            return self.all_outputs
        names = [o.name for o in request.outputs]
        for name in names:
            if name not in self.outputs:
                raise InvalidArgument(
                    f"unexpected inference output '{name}' for model '{self.model_name}'"
                )
        return names

    def check_request(self, request: InferRequest) -> int:
        """Validate ``request`` against the config; return its batch size.

        The batch size is the first dimension of its inputs when the model batches, else 1.
        This runs per request: the passing path stays inline, each failure is a helper.
        """
        names = {t.name for t in request.inputs}
        missing = [n for n in self.required_inputs if n not in names]
        if missing:
            raise missing_inputs_error(
                self.model_name,
                [t.name for t in request.inputs],
                missing,
                len(self.required_inputs),
                len(self.inputs),
            )
        batching = self.batching
        batch_size = -1
        for tensor in request.inputs:
            shape = tensor.data.shape
            spec = self.inputs.get(tensor.name)
            if spec is None or tensor.datatype != spec.datatype:
                self._check_unlisted(tensor, spec)
            if batching:
                if not shape or (batch_size >= 0 and shape[0] != batch_size):
                    raise self._batch_error(tensor)
                batch_size = shape[0]  # ndarray shapes hold ints
            if spec is not None:
                body = shape[1:] if batching else shape
                # The server's request validation may already have applied a config
                # ``reshape``, so the model-side shape is accepted too.
                if (
                    body != spec.dims
                    and not _dims_match(spec.dims, body)
                    and not spec.reshape_accepts(body)
                ):
                    raise shape_error(
                        tensor.name, self.model_name, spec.dims, list(shape), batching
                    )
        return self._batch_size(batch_size)

    def _batch_size(self, first_dim: int) -> int:
        """The request's batch size from its inputs' first dimension (-1: no inputs)."""
        if not self.batching:
            return 1
        if first_dim > self.max_batch_size:
            raise InvalidArgument(
                f"inference request batch-size must be <= {self.max_batch_size} for "
                f"'{self.model_name}'"
            )
        return first_dim if first_dim >= 0 else 1

    def _check_unlisted(self, tensor: Tensor, spec: IOSpec | None) -> None:
        """An input the config does not list (fine for a scheduler's extra inputs), or
        one of another datatype."""
        if spec is None:
            if tensor.name not in self.extra_inputs:
                raise InvalidArgument(
                    f"unexpected inference input '{tensor.name}' for model '{self.model_name}'"
                )
        elif tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"inference input '{tensor.name}' data-type is '{tensor.datatype}', but "
                f"model '{self.model_name}' expects '{spec.datatype}'"
            )

    def _batch_error(self, tensor: Tensor) -> InvalidArgument:
        if len(tensor.data.shape) == 0:
            return no_batch_dimension_error(tensor.name, self.model_name)
        return InvalidArgument(
            f"inference input '{tensor.name}' batch size does not match other "
            f"inputs for '{self.model_name}'"
        )

    # -- merge / split ------------------------------------------------------------------

    def _model_input(self, tensor: Tensor) -> np.ndarray:
        spec = self.inputs.get(tensor.name)
        data = tensor.data
        if spec is None or spec.reshape is None:
            return data
        shape = map_shape(data.shape, spec.dims, spec.reshape, self.batching)
        return _reshape(data, shape, f"input '{tensor.name}'")

    def merge(
        self,
        requests: Sequence[InferRequest],
        batch_sizes: Sequence[int] | None = None,
        requested: Sequence[list[str]] | None = None,
    ) -> Batch:
        """Concatenate the inputs of ``requests`` along the batch dimension.

        ``batch_sizes`` are the sizes from :meth:`check_request` and ``requested`` the
        names from :meth:`requested_outputs` (both computed when None).
        With one request the arrays are passed through (reshaped views, no copy).
        Raises InvalidArgument when the requests cannot be batched together.
        """
        if not requests:
            raise InvalidArgument("no requests to merge")
        if batch_sizes is None:
            batch_sizes = [self.check_request(r) for r in requests]
        if requested is None:
            requested = [self.requested_outputs(r) for r in requests]
        else:
            requested = list(requested)
        output_names = self._output_names(requested)
        first = requests[0]
        if len(requests) == 1:
            if self._reshaped_inputs:
                single = {t.name: self._model_input(t) for t in first.inputs}
            else:
                single = {t.name: t.data for t in first.inputs}
            return Batch(single, list(batch_sizes), output_names, requested)
        if not self.batching:
            raise InvalidArgument(
                f"model '{self.model_name}' does not support batching; cannot merge "
                f"{len(requests)} requests"
            )
        names = [t.name for t in first.inputs]
        inputs = {name: self._merge_input(name, requests) for name in names}
        for index, request in enumerate(requests[1:], start=1):
            if len(request.inputs) != len(names):
                raise InvalidArgument(
                    f"cannot batch requests for model '{self.model_name}': request {index} "
                    f"has inputs {[t.name for t in request.inputs]}, request 0 has {names}"
                )
        return Batch(inputs, list(batch_sizes), output_names, requested)

    def _output_names(self, requested: list[list[str]]) -> list[str]:
        """The outputs a batch computes: every one some request asked for, in config order."""
        if all(names is self.all_outputs for names in requested):
            return self.all_outputs
        wanted = set(requested[0]) if len(requested) == 1 else set().union(*requested)
        return [n for n in self.outputs if n in wanted]

    def _merge_input(self, name: str, requests: Sequence[InferRequest]) -> np.ndarray:
        """Input ``name`` of every request, concatenated; each must have it, with the same
        shape after the batch dimension and the same dtype."""
        parts: list[np.ndarray] = []
        for index, request in enumerate(requests):
            tensor = request.input(name)
            if tensor is None:
                raise InvalidArgument(
                    f"cannot batch requests for model '{self.model_name}': request "
                    f"{index} has no input '{name}'"
                )
            parts.append(self._model_input(tensor))
        base = parts[0]
        for index, part in enumerate(parts[1:], start=1):
            if part.shape[1:] != base.shape[1:] or part.dtype != base.dtype:
                raise InvalidArgument(
                    f"cannot batch requests for model '{self.model_name}': input "
                    f"'{name}' of request {index} has shape {list(part.shape)} "
                    f"({part.dtype}), request 0 has {list(base.shape)} ({base.dtype})"
                )
        return np.concatenate(parts, axis=0)

    def _client_output(self, name: str, array: np.ndarray) -> np.ndarray:
        spec = self.outputs[name]
        if spec.reshape is None:
            return array
        shape = map_shape(array.shape, spec.reshape, spec.dims, self.batching)
        return _reshape(array, shape, f"output '{name}'")

    def split(
        self, batch: Batch, requests: Sequence[InferRequest], outputs: Sequence[np.ndarray]
    ) -> list[InferResponse]:
        """Build one response per request from the outputs of one run over ``batch``.

        ``outputs`` holds one array per ``batch.output_names``.  Raises InternalError when
        an output does not hold the batch's total batch size.
        """
        if len(outputs) != len(batch.output_names):
            raise InternalError(
                f"model '{self.model_name}' returned {len(outputs)} outputs, expected "
                f"{len(batch.output_names)}"
            )
        total = batch.total_batch_size
        split_needed = self.batching and len(requests) > 1
        specs = self.outputs
        full: dict[str, np.ndarray] = {}
        for name, array in zip(batch.output_names, outputs, strict=True):
            if type(array) is not np.ndarray:
                array = np.asarray(array)
            if split_needed and (array.ndim == 0 or array.shape[0] != total):
                raise InternalError(
                    f"output '{name}' of model '{self.model_name}' has shape "
                    f"{list(array.shape)}, expected a batch dimension of {total}"
                )
            full[name] = _cast(array, specs[name])

        responses: list[InferResponse] = []
        start = 0
        for request, size, names in zip(requests, batch.batch_sizes, batch.requested,
                                        strict=True):
            tensors: list[Tensor] = []
            for name in names:
                array = full[name]
                if split_needed:
                    array = array[start : start + size]
                spec = specs[name]
                if spec.reshape is not None:
                    array = self._client_output(name, array)
                tensors.append(Tensor(name, spec.datatype, list(array.shape), array))
            start += size
            responses.append(
                InferResponse(
                    model_name=request.model_name or self.model_name,
                    model_version=self.model_version,
                    id=request.id,
                    outputs=tensors,
                )
            )
        return responses

    # -- the whole execution ------------------------------------------------------------

    def execute(
        self,
        requests: Sequence[InferRequest],
        run: RunFn,
        timing: ExecTiming,
        *,
        prepare: PrepareFn | None = None,
        on_error: ErrorFn | None = None,
    ) -> ExecResult:
        """Run ``requests`` with ``run``; one response or error per request, in order.

        Requests that fail validation get their own InvalidArgument and the rest still
        run.  Batching models run all valid requests at once (or one by one if they
        cannot be merged); other models run each request alone.  An exception from
        ``run`` (mapped by ``on_error``; InternalError by default) is the result of every
        request of that run.  ``timing`` accumulates merging and ``prepare`` (input),
        ``run`` (infer) and splitting (output).
        """
        results: list[InferResponse | InferenceError | None] = [None] * len(requests)
        t0 = time.perf_counter_ns()
        sizes: list[int] = []
        requested: list[list[str]] = []
        valid: list[int] = []
        for index, request in enumerate(requests):
            try:
                sizes.append(self.check_request(request))
                requested.append(self.requested_outputs(request))
                valid.append(index)
            except InferenceError as exc:
                sizes.append(0)
                requested.append([])
                results[index] = exc
        timing.compute_input_ns += time.perf_counter_ns() - t0

        groups = [valid] if self.batching and len(valid) > 1 else [[i] for i in valid]
        while groups:
            group = groups.pop(0)
            self._run_group(group, requests, sizes, requested, run, timing, prepare, on_error,
                            results, groups)
        return [r if r is not None else InternalError("request was not executed")
                for r in results]

    def _run_group(
        self,
        group: list[int],
        requests: Sequence[InferRequest],
        sizes: list[int],
        requested: list[list[str]],
        run: RunFn,
        timing: ExecTiming,
        prepare: PrepareFn | None,
        on_error: ErrorFn | None,
        results: list[InferResponse | InferenceError | None],
        pending: list[list[int]],
    ) -> None:
        group_requests = [requests[i] for i in group]
        t0 = time.perf_counter_ns()
        try:
            batch = self.merge(group_requests, [sizes[i] for i in group],
                               [requested[i] for i in group])
            inputs = prepare(batch.inputs) if prepare is not None else batch.inputs
        except InferenceError as exc:
            timing.compute_input_ns += time.perf_counter_ns() - t0
            if len(group) > 1:
                # Not batchable together after all: run each on its own so that only
                # the request at fault fails.
                pending[:0] = [[i] for i in group]
            else:
                results[group[0]] = exc
            return
        t1 = time.perf_counter_ns()
        timing.compute_input_ns += t1 - t0
        try:
            outputs = run(inputs, batch.output_names)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a response
            timing.compute_infer_ns += time.perf_counter_ns() - t1
            error = _map_error(exc, on_error)
            for i in group:
                results[i] = error
            return
        t2 = time.perf_counter_ns()
        timing.compute_infer_ns += t2 - t1
        try:
            responses = self.split(batch, group_requests, outputs)
        except Exception as exc:  # noqa: BLE001
            error = _map_error(exc, None)
            for i in group:
                results[i] = error
        else:
            for i, response in zip(group, responses, strict=True):
                results[i] = response
        timing.compute_output_ns += time.perf_counter_ns() - t2

def _map_error(exc: Exception, on_error: ErrorFn | None) -> InferenceError:
    if isinstance(exc, InferenceError):
        return exc
    if on_error is not None:
        return on_error(exc)
    return InternalError(str(exc) or type(exc).__name__)

