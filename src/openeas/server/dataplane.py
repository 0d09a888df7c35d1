"""The data plane: everything the HTTP and gRPC front ends do, in one place.

Front ends decode their wire format into :mod:`openeas.protocol.types` objects, call a
method here and encode what comes back; errors are :class:`InferenceError` subclasses that
carry their own HTTP and gRPC status.  Nothing here knows about either wire format.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from openeas import __version__
from openeas.protocol import datatypes
from openeas.protocol.errors import InferenceError, InvalidArgument, Unsupported
from openeas.protocol.types import InferRequest, InferResponse, Tensor
from openeas.server.backends.base import BlockingCallOnLoop, StreamItem
from openeas.server.batching import QueueRejected
from openeas.server.cache import ResponseCache
from openeas.server.models import (
    LoadedVersion,
    ModelManager,
    RepositoryOptions,
    decode_file_parameter,
)
from openeas.server.repository.config import config_to_dict
from openeas.server.settings import LogSettings, TraceSettings
from openeas.server.shared_memory import (
    REGION,
    OutputTarget,
    SharedMemoryRegistry,
    disabled_error,
    write_outputs,
)

#: Protocol extensions this server implements (``GET /v2``, gRPC ServerMetadata), in
#: Triton 2.51's order.  Triton also lists cuda_shared_memory (even built without GPU) and
#: trace; this server has neither.
EXTENSIONS = [
    "classification",
    "sequence",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "logging",
]

#: Listed (after model_configuration, as Triton does) when client shared memory is allowed
#: (``--allow-client-shm``).
SHARED_MEMORY_EXTENSION = "system_shared_memory"


def server_extensions(allow_client_shm: bool) -> list[str]:
    if not allow_client_shm:
        return list(EXTENSIONS)
    at = EXTENSIONS.index("model_configuration") + 1
    return [*EXTENSIONS[:at], SHARED_MEMORY_EXTENSION, *EXTENSIONS[at:]]



def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None

class DecoupledModelError(Unsupported):
    """A unary inference request for a model with the decoupled transaction policy.

    Front ends replace the message with Triton's wording for their endpoint.
    """

    def __init__(self, model_name: str) -> None:
        super().__init__(
            f"model '{model_name}' uses the decoupled transaction policy; its responses "
            f"can only be streamed (gRPC ModelStreamInfer)"
        )
        self.model_name = model_name


class DataPlane:
    """Server-wide operations shared by every front end."""

    def __init__(
        self,
        repository: RepositoryOptions,
        *,
        server_id: str = "triton",
        strict_readiness: bool = True,
        log_settings: dict[str, Any] | None = None,
        allow_client_shm: bool = False,
        cache_size: int = 0,
    ) -> None:
        self.server_id = server_id
        self.allow_client_shm = allow_client_shm
        #: Registered system shared memory regions (empty unless allow_client_shm).
        self.shared_memory = SharedMemoryRegistry()
        self.extensions = server_extensions(allow_client_shm)
        self.strict_readiness = strict_readiness
        #: the response cache, when --cache-config gave it a size
        self.cache = ResponseCache(cache_size) if cache_size else None
        self.loop: asyncio.AbstractEventLoop = asyncio.get_event_loop()
        self.models = ModelManager(repository, self)
        self.log_settings = LogSettings(log_settings or {})
        self.trace_settings = TraceSettings()
        self.started = False
        self.shutting_down = False

    async def start(self) -> list[str]:
        """Load the start-up models; returns load failure messages."""
        self.loop = asyncio.get_running_loop()
        failures = await self.models.start()
        self.started = True
        return failures

    async def stop(self) -> None:
        self.shutting_down = True
        await self.models.stop()
        self.shared_memory.unregister_all()

    # -- health and metadata -----------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        if not self.started or self.shutting_down:
            return False
        return self.models.all_ready() if self.strict_readiness else True

    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.server_id, "version": __version__, "extensions": self.extensions}

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.models.is_ready(name, version)

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        model = self.models.get(name, version)
        config = model.config
        batch = [-1] if config.max_batch_size > 0 else []
        versions = (
            [model.version_str]
            if version
            else [v.version_str for v in self.models.loaded_versions() if v.name == name]
        )
        return {
            "name": name,
            "versions": versions,
            "platform": config.platform or config.backend,
            "inputs": [
                {
                    "name": t.name,
                    "datatype": datatypes.config_to_triton(mc.DataType.Name(t.data_type)),
                    "shape": batch + list(t.dims),
                }
                for t in config.input
            ],
            "outputs": [
                {
                    "name": t.name,
                    "datatype": datatypes.config_to_triton(mc.DataType.Name(t.data_type)),
                    "shape": batch + list(t.dims),
                }
                for t in config.output
            ],
        }

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        return config_to_dict(self.models.get(name, version).config)

    def model_config_proto(self, name: str, version: str = "") -> mc.ModelConfig:
        return self.models.get(name, version).config

    # -- inference ---------------------------------------------------------------------

    def _resolve_shared_memory(self, request: InferRequest) -> list[OutputTarget] | None:
        """Read inputs that live in shared memory; the regions outputs go to (or None)."""
        for tensor in request.inputs:
            if REGION in tensor.parameters:
                self._shared_memory().read_inputs(request)
                break
        if request.outputs:
            for output in request.outputs:
                if REGION in output.parameters:
                    return self._shared_memory().output_targets(request)
        return None

    async def infer(self, request: InferRequest) -> InferResponse:
        """Validate, schedule and post-process one request (through the response cache
        when the model uses it); its statistics are recorded here, once.

        Raises :class:`DecoupledModelError` for a decoupled model (use :meth:`infer_stream`).
        """
        model = self.models.get(request.model_name, request.model_version)
        if model.scheduler.decoupled:
            raise DecoupledModelError(model.name)
        shm_outputs = self._resolve_shared_memory(request)
        cache = self.cache if model.cached and shm_outputs is None else None
        start = time.monotonic_ns()
        try:
            batch_size = model.validate(request)
            if cache is not None:
                response = await self._infer_cached(model, request, batch_size, cache, start)
            else:
                scheduler = model.scheduler
                response = scheduler.infer_now(request, batch_size)
                if response is None:
                    response = await scheduler.infer(request, batch_size)
                _postprocess(model, request, response, shm_outputs)
        except InferenceError as exc:
            model.stats.record_failure(time.monotonic_ns() - start, _failure_reason(exc))
            raise
        model.stats.record_success(time.monotonic_ns() - start)
        return response

    async def _infer_cached(
        self,
        model: LoadedVersion,
        request: InferRequest,
        batch_size: int,
        cache: ResponseCache,
        start: int,
    ) -> InferResponse:
        """A validated request through the response cache (hits skip the model entirely);
        the cache's own hit and miss times are recorded here."""
        key = cache.key(request, model.version_str)
        cached = cache.get(key, request, model.version_str)
        if cached is not None:
            model.stats.cache_hit.add(time.monotonic_ns() - start)
            return cached
        lookup_ns = time.monotonic_ns() - start
        response = await model.scheduler.infer(request, batch_size)
        _postprocess(model, request, response, None)
        insert_start = time.monotonic_ns()
        cache.put(key, response)
        model.stats.cache_miss.add(lookup_ns + time.monotonic_ns() - insert_start)
        return response

    async def infer_stream(self, request: InferRequest) -> AsyncIterator[StreamItem]:
        """Run one request and yield ``(response, final)`` for each response it produces.

        A decoupled model yields every response its model sends, in order, up to the one
        with the final flag; ``response`` is an :class:`InferResponse`, an
        :class:`InferenceError` the model sent as an error response (yielded, not raised:
        the request may go on), or None for a bare final flag.  Any other model yields
        its single response as ``(response, True)``.  Errors before the request reaches
        the model (unknown model, invalid inputs, full queue) and any error of a
        non-decoupled model are raised.  Closing the iterator before the final response
        cancels the request (the model sees ``request.is_cancelled()``).

        Statistics count a decoupled request once, when its final flag arrives: a failure
        when any of its responses was an error, a success otherwise.
        """
        model = self.models.get(request.model_name, request.model_version)
        if not model.scheduler.decoupled:
            yield await self.infer(request), True
            return
        shm_outputs = self._resolve_shared_memory(request)
        start = time.monotonic_ns()
        failed = False
        try:
            batch_size = model.validate(request)
        except InferenceError:
            model.stats.record_failure(time.monotonic_ns() - start, "BACKEND")
            raise
        async with aclosing(model.scheduler.stream(request, batch_size)) as responses:
            while True:
                try:
                    response, final = await anext(responses)
                except StopAsyncIteration:
                    return
                except InferenceError as exc:  # refused in the queue (unloading, full, timeout)
                    model.stats.record_failure(time.monotonic_ns() - start, _failure_reason(exc))
                    raise
                if isinstance(response, InferResponse):
                    try:
                        _postprocess(model, request, response, shm_outputs)
                    except InferenceError as exc:
                        response = exc
                if isinstance(response, InferenceError):
                    failed = True
                if final:
                    elapsed = time.monotonic_ns() - start
                    if failed:
                        model.stats.record_failure(elapsed, "BACKEND")
                    else:
                        model.stats.record_success(elapsed)
                yield response, final

    # InferenceHandle (BLS from Python models)
    def infer_blocking(self, request: InferRequest, timeout: float | None = None) -> InferResponse:
        if _running_loop() is self.loop:
            # Waiting here would block the loop that has to run the request.
            raise BlockingCallOnLoop(
                f"blocking inference request to model '{request.model_name}' made on the "
                "server's event loop thread"
            )
        future = asyncio.run_coroutine_threadsafe(self.infer(request), self.loop)
        return future.result(timeout)

    def is_model_ready(self, name: str, version: str = "") -> bool:
        return self.models.is_ready(name, version)

    # -- system shared memory ----------------------------------------------------------

    def _shared_memory(self) -> SharedMemoryRegistry:
        if not self.allow_client_shm:
            raise disabled_error()
        return self.shared_memory

    def check_shared_memory_allowed(self) -> None:
        """SharedMemoryDisabled unless the server runs with ``--allow-client-shm=true``."""
        self._shared_memory()

    def system_shm_status(self, name: str = "") -> list[dict[str, Any]]:
        """``[{name, key, offset, byte_size}]`` of region ``name``, or of every region."""
        return self._shared_memory().status(name)

    def system_shm_register(self, name: str, key: Any, offset: Any, byte_size: Any) -> None:
        self._shared_memory().register(name, key, offset, byte_size)

    def system_shm_unregister(self, name: str = "") -> None:
        """Unregister region ``name`` (unknown names are no error), or every region."""
        self._shared_memory().unregister(name)

    def cuda_shm_status(self, name: str = "") -> list[dict[str, Any]]:
        """Always empty (no GPU); a name is not found."""
        return self._shared_memory().cuda_status(name)

    def cuda_shm_register(self, name: str) -> None:
        """Fails with Triton's message for a server without GPU support."""
        self._shared_memory().cuda_register(name)

    def cuda_shm_unregister(self, name: str = "") -> None:
        """Nothing to unregister (no CUDA region can exist); succeeds, as in Triton."""
        self._shared_memory()

    # -- statistics --------------------------------------------------------------------

    def statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        if name:
            if version:
                selected = [self.models.get(name, version)]
            else:
                selected = [v for v in self.models.loaded_versions() if v.name == name]
                if not selected:
                    self.models.get(name)  # raises the right not-found error
        else:
            selected = list(self.models.loaded_versions())
        return {
            "model_stats": [
                v.stats.as_dict(v.name, v.version_str)
                for v in sorted(selected, key=lambda v: (v.name, v.version))
            ]
        }

    # -- repository --------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return self.models.index(ready_only)

    async def load_model(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        """Repository API load: optional ``config`` JSON and ``file:<path>`` contents."""
        self.models.check_explicit_allowed()
        config_json: str | None = None
        files: dict[str, bytes] = {}
        for key, value in (parameters or {}).items():
            if key == "config":
                if not isinstance(value, str):
                    raise InvalidArgument("load parameter 'config' must be a JSON string")
                config_json = value
            elif key.startswith("file:"):
                if isinstance(value, bytes):
                    files[key[5:]] = value
                elif isinstance(value, str):
                    files[key[5:]] = decode_file_parameter(value)
                else:
                    raise InvalidArgument(f"load parameter '{key}' must be base64 contents")
        await self.models.load(name, config_json, files or None)

    async def unload_model(self, name: str, parameters: dict[str, Any] | None = None) -> None:
        self.models.check_explicit_allowed()
        dependents = bool((parameters or {}).get("unload_dependents", False))
        await self.models.unload(name, dependents)


def _failure_reason(error: InferenceError) -> str:
    """The ``reason`` label of nv_inference_request_failure for an error."""
    return "REJECTED" if isinstance(error, QueueRejected) else "BACKEND"


def _postprocess(
    model: LoadedVersion,
    request: InferRequest,
    response: InferResponse,
    shm_outputs: list[OutputTarget] | None,
) -> None:
    """What every response of a model gets: its version, the classification the request
    asked for, and the shared-memory regions its outputs go to."""
    response.model_version = model.version_str
    if request.outputs and _classifies(request):
        _classify(response, request, model)
    if shm_outputs:
        write_outputs(response, shm_outputs)


def _classifies(request: InferRequest) -> bool:
    """Whether any requested output asks for classification (a loop: no generator)."""
    for output in request.outputs or ():  # noqa: SIM110
        if output.classification:
            return True
    return False


def _classify(response: InferResponse, request: InferRequest, model: LoadedVersion) -> None:
    """Replace outputs that asked for ``classification`` with top-k label strings."""
    assert request.outputs is not None
    wanted = {o.name: o.classification for o in request.outputs if o.classification}
    batched = model.config.max_batch_size > 0
    for index, tensor in enumerate(response.outputs):
        k = wanted.get(tensor.name)
        if not k:
            continue
        if tensor.datatype == "BYTES":
            raise InvalidArgument(
                f"class result not available for output '{tensor.name}' due to unsupported "
                "type 'BYTES'"
            )
        labels = model.labels.get(tensor.name, [])
        rows = tensor.data.reshape(tensor.shape[0], -1) if batched else tensor.data.reshape(1, -1)
        k = min(k, rows.shape[1])
        results = []
        for row in rows:
            order = np.argsort(-row.astype(np.float64), kind="stable")[:k]
            for idx in order:
                text = f"{float(row[idx]):f}:{int(idx)}"
                if idx < len(labels):
                    text += f":{labels[idx]}"
                results.append(text.encode())
        data = datatypes.to_bytes_array(results)
        shape = [rows.shape[0], k] if batched else [k]
        response.outputs[index] = Tensor(tensor.name, "BYTES", shape, data.reshape(shape))
