"""Ensemble models (``platform: "ensemble"``): a graph of steps over other models.

:func:`build_plan` checks the graph of an ensemble config on its own (every consumed
tensor has a producer, every output is produced, no cycles);
:func:`check_composing` checks each step against its loaded composing model.  An
:class:`EnsembleExecutor` runs requests with the same surface as a
:class:`~openeas.server.scheduler.Scheduler` (``infer``, ``pending``, ``decoupled``,
``close``), so the data plane serves an ensemble like any other model.

Each step is an :class:`InferRequest` to its composing model through the data plane, so
validation, scheduling (dynamic batching) and statistics apply to the composing models.
A step starts as soon as all its inputs exist; independent steps run concurrently.
Intermediate tensors stay in-process: the numpy arrays a step returns are handed to the
next steps as they are.  Only the steps that lead to the requested outputs run.
"""

from __future__ import annotations

import asyncio
import graphlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from openeas.protocol import datatypes, errors
from openeas.protocol.errors import InferenceError, InternalError, InvalidArgument, Unavailable
from openeas.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor
from openeas.server.batching import InFlight
from openeas.server.repository.config import ModelConfig
from openeas.server.stats import ModelStats

log = logging.getLogger(__name__)

#: Runs one request on the server (``DataPlane.infer``).
InferFn = Callable[[InferRequest], Awaitable[InferResponse]]


@dataclass(frozen=True, slots=True)
class Step:
    """One ``ensemble_scheduling.step``."""

    index: int
    model_name: str
    #: "" for the latest ready version (``model_version: -1``)
    model_version: str
    #: (composing model input, ensemble tensor)
    inputs: tuple[tuple[str, str], ...]
    #: (composing model output, ensemble tensor)
    outputs: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return f"step {self.index} (model '{self.model_name}')"


@dataclass(frozen=True, slots=True)
class EnsemblePlan:
    """The checked graph of an ensemble."""

    name: str
    steps: tuple[Step, ...]
    #: the steps each step waits for (producers of its inputs), by index
    depends: tuple[frozenset[int], ...]
    #: ensemble tensor -> index of the step that produces it (ensemble inputs are absent)
    producer: dict[str, int]
    outputs: tuple[str, ...]

    def composing_models(self) -> set[str]:
        return {step.model_name for step in self.steps}

    def needed_steps(self, outputs: list[str] | tuple[str, ...]) -> frozenset[int]:
        """The steps that lead to ``outputs``."""
        needed: set[int] = set()
        todo = [self.producer[name] for name in outputs if name in self.producer]
        while todo:
            index = todo.pop()
            if index in needed:
                continue
            needed.add(index)
            todo.extend(self.depends[index])
        return frozenset(needed)


def build_plan(config: ModelConfig) -> EnsemblePlan:
    """Check the graph of an ensemble config; raises InvalidArgument naming the problem."""
    where = f"ensemble '{config.name}'"
    inputs = _check_declared(config, where)
    producer: dict[str, int] = {}
    steps = [
        _plan_step(config.name, where, index, raw, inputs, producer)
        for index, raw in enumerate(config.ensemble_scheduling.step)
    ]
    depends = [_dependencies(where, step, inputs, producer) for step in steps]
    for output in config.output:
        if output.name not in producer and output.name not in inputs:
            raise InvalidArgument(
                f"{where}: ensemble output '{output.name}' is not produced by any step"
            )
    _check_acyclic(where, steps, depends)
    return EnsemblePlan(
        name=config.name,
        steps=tuple(steps),
        depends=tuple(depends),
        producer=producer,
        outputs=tuple(t.name for t in config.output),
    )


def _check_declared(config: ModelConfig, where: str) -> set[str]:
    """An ensemble has steps, inputs and outputs; the names of its inputs."""
    if not config.HasField("ensemble_scheduling") or not config.ensemble_scheduling.step:
        raise InvalidArgument(f"{where} must specify at least one step in 'ensemble_scheduling'")
    inputs = {t.name for t in config.input}
    if not inputs:
        raise InvalidArgument(f"{where} must specify at least one input")
    if not config.output:
        raise InvalidArgument(f"{where} must specify at least one output")
    return inputs


def _plan_step(
    name: str,
    where: str,
    index: int,
    raw: mc.ModelEnsembling.Step,
    inputs: set[str],
    producer: dict[str, int],
) -> Step:
    """One checked step; records the tensors it produces in ``producer``."""
    label = f"step {index} (model '{raw.model_name}')"
    if not raw.model_name:
        raise InvalidArgument(f"{where}: step {index} must specify 'model_name'")
    if raw.model_name == name:
        raise InvalidArgument(
            f"{where}: {label} refers to the ensemble itself, which makes a cycle"
        )
    if not raw.input_map:
        raise InvalidArgument(f"{where}: {label} must map at least one input")
    if not raw.output_map:
        raise InvalidArgument(f"{where}: {label} must map at least one output")
    for model_output, tensor in sorted(raw.output_map.items()):
        if tensor in inputs:
            raise InvalidArgument(
                f"{where}: {label} maps output '{model_output}' to '{tensor}', which is "
                "already an ensemble input"
            )
        if tensor in producer:
            raise InvalidArgument(
                f"{where}: tensor '{tensor}' is produced by both step {producer[tensor]} "
                f"and {label}"
            )
        producer[tensor] = index
    return Step(
        index=index,
        model_name=raw.model_name,
        model_version="" if raw.model_version < 0 else str(raw.model_version),
        inputs=tuple(sorted(raw.input_map.items())),
        outputs=tuple(sorted(raw.output_map.items())),
    )


def _dependencies(
    where: str, step: Step, inputs: set[str], producer: dict[str, int]
) -> frozenset[int]:
    """The steps that produce ``step``'s inputs (ensemble inputs need none)."""
    deps: set[int] = set()
    for model_input, tensor in step.inputs:
        if tensor in inputs:
            continue
        if tensor not in producer:
            raise InvalidArgument(
                f"{where}: {step.label} consumes tensor '{tensor}' (for its input "
                f"'{model_input}'), which is neither an ensemble input nor produced by "
                "any step"
            )
        deps.add(producer[tensor])
    return frozenset(deps)


def _check_acyclic(where: str, steps: list[Step], depends: list[frozenset[int]]) -> None:
    sorter = graphlib.TopologicalSorter({step.index: depends[step.index] for step in steps})
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1]  # [a, b, ..., a]: each node depends on the one before it
        labels = ", ".join(steps[index].label for index in sorted(set(cycle)))
        raise InvalidArgument(f"{where}: the steps form a cycle: {labels}") from None


def _datatype(tensor: mc.ModelInput | mc.ModelOutput) -> str:
    return datatypes.config_to_triton(mc.DataType.Name(tensor.data_type))


@dataclass
class _TensorTypes:
    """Each ensemble tensor's datatype and where it comes from (for the messages)."""

    types: dict[str, str]
    origin: dict[str, str]

    def mismatch(self, tensor: str, expected: str) -> str | None:
        """The tensor's datatype when it is known and not ``expected``."""
        given = self.types.get(tensor)
        return given if given is not None and given != expected else None


def check_composing(
    config: ModelConfig,
    plan: EnsemblePlan,
    composing: dict[tuple[str, str], tuple[ModelConfig, bool]],
) -> None:
    """Check each step against its composing model's config.

    ``composing`` maps (model name, version) of each step to the model's config and
    whether it is decoupled.  Checks that mapped inputs and outputs exist, that every
    required input is fed, that datatypes agree along each tensor, and that each
    composing model accepts the ensemble's batch size.
    """
    where = f"ensemble '{config.name}'"
    known = _TensorTypes(
        types={t.name: _datatype(t) for t in config.input},
        origin={t.name: "ensemble input" for t in config.input},
    )
    for step in plan.steps:  # first every producer's types, then every consumer's check
        model, decoupled = composing[(step.model_name, step.model_version)]
        _check_step_model(where, config, step, model, decoupled)
        _record_outputs(where, step, model, known)
    for step in plan.steps:
        model, _ = composing[(step.model_name, step.model_version)]
        _check_step_inputs(where, step, model, known)
    for output in config.output:
        given = known.mismatch(output.name, _datatype(output))
        if given is not None:
            raise InvalidArgument(
                f"{where}: output '{output.name}' is declared {_datatype(output)}, but "
                f"{known.origin[output.name]} is {given}"
            )


def _check_step_model(
    where: str, config: ModelConfig, step: Step, model: ModelConfig, decoupled: bool
) -> None:
    """A composing model answers once and takes the ensemble's batch size."""
    if decoupled:
        raise InvalidArgument(
            f"{where}: {step.label} is decoupled, which an ensemble step cannot be"
        )
    if config.max_batch_size > 0 and model.max_batch_size < config.max_batch_size:
        raise InvalidArgument(
            f"{where} allows maximum batch size {config.max_batch_size}, but its "
            f"{step.label} only allows {model.max_batch_size}"
        )


def _record_outputs(where: str, step: Step, model: ModelConfig, known: _TensorTypes) -> None:
    """The datatypes of the tensors ``step`` produces; its mapped outputs must exist."""
    for tensor in model.output:
        datatype = _datatype(tensor)
        for model_output, name in step.outputs:
            if model_output == tensor.name:
                known.types[name] = datatype
                known.origin[name] = f"output '{model_output}' of {step.label}"
    outputs = {t.name for t in model.output}
    for model_output, _ in step.outputs:
        if model_output not in outputs:
            raise InvalidArgument(
                f"{where}: {step.label} maps output '{model_output}', which the model does not have"
            )


def _check_step_inputs(where: str, step: Step, model: ModelConfig, known: _TensorTypes) -> None:
    """``step``'s mapped inputs exist with the datatype of what feeds them; the required
    ones are all fed."""
    specs = {t.name: t for t in model.input}
    for model_input, tensor in step.inputs:
        spec = specs.get(model_input)
        if spec is None:
            raise InvalidArgument(
                f"{where}: {step.label} maps input '{model_input}', which the model does not have"
            )
        expected = _datatype(spec)
        given = known.mismatch(tensor, expected)
        if given is not None:
            raise InvalidArgument(
                f"{where}: {step.label} input '{model_input}' expects {expected}, but "
                f"tensor '{tensor}' ({known.origin[tensor]}) is {given}"
            )
    fed = {model_input for model_input, _ in step.inputs}
    missing = [t.name for t in model.input if not t.optional and t.name not in fed]
    if missing:
        raise InvalidArgument(f"{where}: {step.label} does not map required input(s) {missing}")


def _step_error(ensemble: str, step: Step, exc: InferenceError) -> InferenceError:
    """``exc`` with the ensemble and step in its message, keeping its status code."""
    message = f"in ensemble '{ensemble}', {step.label} failed: {exc}"
    for cls in type(exc).__mro__:
        if cls.__module__ == errors.__name__ and issubclass(cls, InferenceError):
            return cls(message)
    return InternalError(message)


class EnsembleExecutor:
    """Runs an ensemble's requests; the surface of a Scheduler for the data plane."""

    #: Ensembles answer each request once (decoupled composing models are refused).
    decoupled = False

    def __init__(self, plan: EnsemblePlan, infer: InferFn, stats: ModelStats) -> None:
        self._plan = plan
        self._infer = infer
        self._stats = stats
        self._all_steps = plan.needed_steps(plan.outputs)
        self._closed = False
        self._inflight = InFlight()

    @property
    def pending(self) -> int:
        """Requests in flight through the ensemble."""
        return self._inflight.count

    def infer_now(self, request: InferRequest, batch_size: int) -> None:
        """Never: an ensemble's steps always go through their own schedulers."""
        return None

    async def infer(self, request: InferRequest, batch_size: int) -> InferResponse:
        if self._closed:
            raise Unavailable(f"model '{self._plan.name}' is unloading")
        self._inflight.enter()
        try:
            response = await self._run(request)
        finally:
            self._inflight.leave()
        self._stats.inference_count += batch_size
        self._stats.execution_count += 1
        return response

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new requests and wait for the ones in flight."""
        self._closed = True
        if not await self._inflight.wait_idle(timeout):
            log.warning("ensemble '%s' still has requests in flight at unload", self._plan.name)

    async def _run(self, request: InferRequest) -> InferResponse:
        plan = self._plan
        if request.outputs:
            wanted: tuple[str, ...] = tuple(o.name for o in request.outputs)
            needed = plan.needed_steps(wanted)
        else:
            wanted, needed = plan.outputs, self._all_steps
        values: dict[str, Tensor] = {t.name: t for t in request.inputs}
        waiting = {index: set(plan.depends[index]) for index in needed}
        running: dict[asyncio.Task[InferResponse], Step] = {}
        try:
            while waiting or running:
                ready = [index for index, deps in waiting.items() if not deps]
                for index in ready:
                    del waiting[index]
                    step = plan.steps[index]
                    task = asyncio.ensure_future(self._run_step(step, values, request))
                    running[task] = step
                if not running:  # cannot happen with a checked plan
                    raise InternalError(f"ensemble '{plan.name}' has steps that cannot run")
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    step = running.pop(task)
                    self._store_outputs(step, task.result(), values)
                    for deps in waiting.values():
                        deps.discard(step.index)
        finally:
            for task in running:
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # retrieved: only the first failure is reported
        return self._response(request, wanted, values)

    def _store_outputs(
        self, step: Step, response: InferResponse, values: dict[str, Tensor]
    ) -> None:
        """A finished step's outputs, under their ensemble tensor names."""
        for model_output, name in step.outputs:
            tensor = response.output(model_output)
            if tensor is None:
                raise InternalError(
                    f"in ensemble '{self._plan.name}', {step.label} returned no "
                    f"output '{model_output}'"
                )
            values[name] = Tensor(name, tensor.datatype, tensor.shape, tensor.data)

    def _response(
        self, request: InferRequest, wanted: tuple[str, ...], values: dict[str, Tensor]
    ) -> InferResponse:
        outputs: list[Tensor] = []
        for name in wanted:
            tensor = values.get(name)
            if tensor is None:  # an ensemble input passed through that was not given
                raise InvalidArgument(
                    f"in ensemble '{self._plan.name}', output '{name}' has no value"
                )
            if tensor.parameters:
                tensor = Tensor(name, tensor.datatype, tensor.shape, tensor.data)
            outputs.append(tensor)
        return InferResponse(
            model_name=self._plan.name, model_version="", id=request.id, outputs=outputs
        )

    async def _run_step(
        self, step: Step, values: dict[str, Tensor], request: InferRequest
    ) -> InferResponse:
        inputs: list[Tensor] = []
        for model_input, name in step.inputs:
            tensor = values.get(name)
            if tensor is None:  # an optional ensemble input the client left out
                continue
            inputs.append(Tensor(model_input, tensor.datatype, tensor.shape, tensor.data))
        step_request = InferRequest(
            model_name=step.model_name,
            model_version=step.model_version,
            id=request.id,
            inputs=inputs,
            outputs=[RequestedOutput(model_output) for model_output, _ in step.outputs],
            parameters=dict(request.parameters),
        )
        try:
            return await self._infer(step_request)
        except InferenceError as exc:
            raise _step_error(self._plan.name, step, exc) from None
