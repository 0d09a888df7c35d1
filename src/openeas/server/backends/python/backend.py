"""Triton's Python backend, in-process: ``model.py`` files with a ``TritonPythonModel``.

Each model instance imports the model file as its own module (a unique module name, so
instances never share module state) and creates its own ``TritonPythonModel()``.  The
scheduler calls :meth:`PythonModelInstance.execute` from the instance's worker thread;
an ``async def execute`` runs to completion on an event loop that belongs to the
instance.  ``import triton_python_backend_utils as pb_utils`` resolves to
:mod:`openeas.server.backends.python.triton_python_backend_utils`.

While the model file is imported its version directory is first on ``sys.path``, so
sibling modules (``import utils`` next to ``model.py``) load.  Modules loaded from the
version directory are then taken out of ``sys.modules`` again: the model keeps its
references, and another model with a sibling of the same name gets its own copy.
Siblings should therefore be imported at the top of ``model.py`` (or during the import).
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import itertools
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from google.protobuf import json_format

from openeas.protocol.errors import InternalError, InvalidArgument
from openeas.protocol.types import InferRequest
from openeas.server.backends.base import (
    Backend,
    ExecResult,
    ExecTiming,
    ModelContext,
    ModelInstance,
    ResponseStream,
    StreamClosed,
)
from openeas.server.backends.python import _runtime, convert
from openeas.server.backends.python import triton_python_backend_utils as pb_utils
from openeas.server.repository.config import ModelConfig, config_to_dict, config_to_json

log = logging.getLogger(__name__)

#: The name model files import.
PB_UTILS_MODULE = "triton_python_backend_utils"
#: The model file when ``default_model_filename`` does not name one.
DEFAULT_MODEL_FILE = "model.py"

_PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))
_IMPORT_LOCK = threading.Lock()
_MODULE_IDS = itertools.count(1)


# --------------------------------------------------------------------------- module loading


def install_pb_utils() -> None:
    """Make ``import triton_python_backend_utils`` give this backend's module."""
    if sys.modules.get(PB_UTILS_MODULE) is not pb_utils:
        sys.modules[PB_UTILS_MODULE] = pb_utils


def model_file(config: ModelConfig, version_dir: Path) -> Path:
    """The model file of a version: ``default_model_filename`` or ``model.py``."""
    return Path(version_dir) / (config.default_model_filename or DEFAULT_MODEL_FILE)


def _inside(path: str | None, directory: str) -> bool:
    if not path:
        return False
    real = os.path.realpath(path)
    return real == directory or real.startswith(directory + os.sep)


def _loaded_from(module: ModuleType | None, directory: str) -> bool:
    if module is None:
        return False
    if _inside(getattr(module, "__file__", None), directory):
        return True
    search = getattr(module, "__path__", None)
    try:
        return any(_inside(p, directory) for p in search or ())
    except TypeError:
        return False


def load_model_module(path: Path, tag: str) -> ModuleType:
    """Import a model file as a new module with a unique name.

    ``tag`` goes into the module name (model, version, instance) to ease debugging.
    The file's directory is on ``sys.path`` during the import only.
    """
    install_pb_utils()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"unable to find model file '{path}'")
    safe_tag = re.sub(r"\W", "_", tag)
    module_name = f"_openeas_python_model_{safe_tag}_{next(_MODULE_IDS)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"unable to load model file '{path}'")
    module = importlib.util.module_from_spec(spec)
    directory = os.path.realpath(path.parent)
    with _IMPORT_LOCK:
        before = set(sys.modules)
        sys.path.insert(0, directory)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        finally:
            try:
                sys.path.remove(directory)
            except ValueError:
                pass
            for name in set(sys.modules) - before:
                if name != module_name and _loaded_from(sys.modules.get(name), directory):
                    sys.modules.pop(name, None)
    return module


def unload_model_module(module: ModuleType | None) -> None:
    """Forget a module loaded by :func:`load_model_module`."""
    if module is not None and sys.modules.get(module.__name__) is module:
        del sys.modules[module.__name__]


def _format_exception(exc: BaseException) -> str:
    """``Type: message`` plus the model's frames, innermost first (as Triton prints them)."""
    text = f"{type(exc).__name__}: {exc}"
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not _inside(frame.filename, _PACKAGE_DIR)
    ]
    if frames:
        lines = [f"  {frame.filename}({frame.lineno}): {frame.name}" for frame in reversed(frames)]
        text += "\n\nAt:\n" + "\n".join(lines) + "\n"
    return text


# --------------------------------------------------------------------------- instance


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _inline_capable(model: Any, path: Path) -> bool:
    """Whether a model's execute may run on the server's event loop thread.

    Not for ``async def execute`` (it runs on the instance's own loop) nor for models whose
    source mentions BLS (``InferenceRequest``): a blocking BLS call from the server's loop
    thread would wait for itself. The source check can miss BLS made from a helper
    module; then the call fails at once (``BlockingCallOnLoop``) and the instance is
    revoked (:meth:`PythonModelInstance.revoke_inline`), so that only one request fails.
    """
    if inspect.iscoroutinefunction(model.execute):
        return False
    try:
        source = path.read_text(errors="replace")
    except OSError:
        return False
    return "InferenceRequest(" not in source and "async_exec" not in source


class PythonModelInstance(ModelInstance):
    """One ``TritonPythonModel`` object, its module and its event loop."""

    def __init__(self, context: ModelContext, instance_name: str, device_id: int) -> None:
        self._context = context
        self._instance_name = instance_name
        self._device_id = device_id
        self._version = str(context.version)
        config = context.config
        self.decoupled = bool(config.model_transaction_policy.decoupled)
        self._output_names = [output.name for output in config.output]
        self._runtime = _runtime.InstanceRuntime(context.name, instance_name, context.handle)
        _runtime.set_default_handle(context.handle)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._module: ModuleType | None = None
        self._model: Any = None
        self._finalized = False
        path = model_file(config, context.version_dir)
        try:
            self._module = load_model_module(
                path, f"{context.name}_{context.version}_{instance_name}"
            )
            model_class = self._module.TritonPythonModel
            self._model = model_class()
            if not callable(getattr(self._model, "execute", None)):
                raise AttributeError("'TritonPythonModel' object has no attribute 'execute'")
            initialize = getattr(self._model, "initialize", None)
            if callable(initialize):
                self._call(initialize, self.initialize_args())
            # decoupled models answer from their own threads: never on the server's loop
            self.inline_capable = not self.decoupled and _inline_capable(self._model, path)
        except Exception as exc:
            self._release()
            raise InternalError(
                f"Failed to initialize Python stub for model instance '{instance_name}': "
                f"{_format_exception(exc)}"
            ) from exc

    def revoke_inline(self, reason: str) -> None:
        """Never run this instance's model code on the server's event loop again."""
        if self.inline_capable:
            log.error("model instance '%s' no longer runs inline: %s", self._instance_name, reason)
        self.inline_capable = False

    @property
    def model(self) -> Any:
        """The ``TritonPythonModel`` object (None after :meth:`finalize`)."""
        return self._model

    @property
    def module(self) -> ModuleType | None:
        """The module the model file was imported as."""
        return self._module

    def initialize_args(self) -> dict[str, str]:
        """The ``args`` dict that ``TritonPythonModel.initialize`` receives."""
        context = self._context
        return {
            "model_config": config_to_json(context.config).decode(),
            "model_instance_kind": "CPU",
            "model_instance_name": self._instance_name,
            "model_instance_device_id": str(self._device_id),
            "model_repository": str(context.model_dir),
            "model_version": self._version,
            "model_name": context.name,
        }

    # ---------------------------------------------------------------- running model code

    def _run(self, awaitable: Awaitable[Any]) -> Any:
        """Run a coroutine of the model to completion on the instance's loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.new_event_loop()
        return loop.run_until_complete(_await(awaitable))

    def _call(self, function: Any, *args: Any) -> Any:
        """Call model code as the current instance; await it if it is a coroutine."""
        if self.inline_capable:
            # No BLS seen and a plain ``def execute``: nothing needs the ambient instance.
            return _runtime.call_inline(self, function, *args)
        with _runtime.activate(self._runtime):
            result = function(*args)
            if inspect.isawaitable(result):
                result = self._run(result)
        return result

    def _send_unsupported(
        self,
        request: pb_utils.InferenceRequest,
        response: pb_utils.InferenceResponse | None,
        flags: int,
    ) -> None:
        raise pb_utils.TritonError(
            f"model '{self._context.name}': sending responses through a response sender "
            f"needs a model with the decoupled transaction policy",
            pb_utils.TritonError.UNSUPPORTED,
        )

    def _pb_request(
        self,
        request: InferRequest,
        wanted: list[str] | None,
        send_hook: convert.SendHook,
        cancelled_hook: Callable[[], bool] | None = None,
    ) -> pb_utils.InferenceRequest:
        """The ``pb_utils.InferenceRequest`` this instance's model gets for ``request``."""
        return convert.to_pb_request(
            request,
            model_name=self._context.name,
            model_version=self._context.version,
            output_names=wanted,
            send_hook=send_hook,
            cancelled_hook=cancelled_hook,
        )

    def _failure(self, message: str) -> str:
        return (
            f"Failed to process the request(s) for model instance '{self._instance_name}', "
            f"message: {message}"
        )

    # ---------------------------------------------------------------- execute

    def execute(self, requests: list[InferRequest], timing: ExecTiming) -> ExecResult:
        """Run one batch through ``TritonPythonModel.execute``."""
        if not requests:
            return []
        if self._model is None:
            return [
                InternalError(f"model instance '{self._instance_name}' is finalized")
                for _ in requests
            ]
        start = time.perf_counter_ns()
        filters: list[list[str] | None] = []
        pb_requests: list[pb_utils.InferenceRequest] = []
        try:
            for request in requests:
                wanted = convert.requested_outputs(request, self._output_names)
                filters.append(wanted)
                pb_requests.append(self._pb_request(request, wanted, self._send_unsupported))
        except Exception as exc:
            message = self._failure(_format_exception(exc))
            return [InternalError(message) for _ in requests]
        inputs_done = time.perf_counter_ns()
        timing.compute_input_ns = inputs_done - start

        try:
            result = self._call(self._model.execute, pb_requests)
        except Exception as exc:
            timing.compute_infer_ns = time.perf_counter_ns() - inputs_done
            message = self._failure(_format_exception(exc))
            log.info("%s", message)
            return [InternalError(message) for _ in requests]
        infer_done = time.perf_counter_ns()
        timing.compute_infer_ns = infer_done - inputs_done

        results = self._results(requests, filters, result)
        timing.compute_output_ns = time.perf_counter_ns() - infer_done
        return results

    def execute_decoupled(
        self, requests: list[InferRequest], streams: list[ResponseStream], timing: ExecTiming
    ) -> None:
        """Run one batch of a decoupled model: ``execute`` answers through response senders.

        Each request's ``get_response_sender()`` sends into its stream, from any thread and
        also after ``execute`` returned; ``request.is_cancelled()`` reads the stream's
        cancellation.  When ``execute`` raises (or returns something other than None) every
        request whose sender is still open fails.
        """
        if not requests:
            return
        if self._model is None:
            error = InternalError(f"model instance '{self._instance_name}' is finalized")
            for stream in streams:
                stream.close_with(error)
            return
        start = time.perf_counter_ns()
        pb_requests: list[pb_utils.InferenceRequest] = []
        try:
            for request, stream in zip(requests, streams, strict=True):
                wanted = convert.requested_outputs(request, self._output_names)
                sender = _StreamSender(request, stream, wanted, self._version)
                pb_requests.append(self._pb_request(request, wanted, sender.send, sender.cancelled))
        except Exception as exc:
            error = InternalError(self._failure(_format_exception(exc)))
            for stream in streams:
                stream.close_with(error)
            return
        inputs_done = time.perf_counter_ns()
        timing.compute_input_ns = inputs_done - start
        try:
            result = self._call(self._model.execute, pb_requests)
        except Exception as exc:
            message = self._failure(_format_exception(exc))
            log.info("%s", message)
            result = None
            for stream in streams:
                stream.close_with(InternalError(message))
        timing.compute_infer_ns = time.perf_counter_ns() - inputs_done
        if result is not None:
            error = InternalError(
                self._failure(
                    f"Python model '{self._context.name}' is using the decoupled mode and the "
                    f"execute function must return None."
                )
            )
            for stream in streams:
                stream.close_with(error)

    def _results(
        self, requests: list[InferRequest], filters: list[list[str] | None], result: Any
    ) -> ExecResult:
        if not isinstance(result, list | tuple):
            message = self._failure(
                f"Python model '{self._context.name}' is using the non-decoupled mode and the "
                f"execute function must return a list of InferenceResponse objects, got "
                f"'{type(result).__name__}'."
            )
            return [InternalError(message) for _ in requests]
        if len(result) != len(requests):
            message = self._failure(
                f"Number of InferenceResponse objects do not match the number of "
                f"InferenceRequest objects. InferenceRequest(s) size is:{len(requests)}, and "
                f"InferenceResponse(s) size is:{len(result)}\n"
            )
            return [InternalError(message) for _ in requests]
        out: ExecResult = []
        for request, wanted, response in zip(requests, filters, result, strict=True):
            out.append(
                convert.to_server_response(
                    request, response, model_version=self._version, requested=wanted
                )
            )
        return out

    # ---------------------------------------------------------------- finalize

    def finalize(self) -> None:
        """Call ``TritonPythonModel.finalize`` (if any) and release the instance."""
        if self._finalized:
            return
        self._finalized = True
        finalize = getattr(self._model, "finalize", None) if self._model is not None else None
        if callable(finalize):
            try:
                self._call(finalize)
            except Exception as exc:
                log.error(
                    "finalize of model instance '%s' failed: %s",
                    self._instance_name,
                    _format_exception(exc),
                )
        self._release()

    def _release(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            try:
                pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception:  # pragma: no cover - best effort on teardown
                log.debug(
                    "closing the event loop of '%s' failed", self._instance_name, exc_info=True
                )
            finally:
                loop.close()
        unload_model_module(self._module)
        self._model = None


class _StreamSender:
    """The ``send`` and ``is_cancelled`` hooks of one request of a decoupled model."""

    __slots__ = ("_request", "_stream", "_wanted", "_version")

    def __init__(
        self,
        request: InferRequest,
        stream: ResponseStream,
        wanted: list[str] | None,
        version: str,
    ) -> None:
        self._request = request
        self._stream = stream
        self._wanted = wanted
        self._version = version

    def cancelled(self) -> bool:
        return self._stream.cancelled

    def send(
        self,
        request: pb_utils.InferenceRequest,
        response: pb_utils.InferenceResponse | None,
        flags: int,
    ) -> None:
        if self._stream.closed:
            raise pb_utils.TritonError("Unable to send response. Response sender has been closed.")
        if flags not in (0, pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL):
            raise pb_utils.TritonError(
                "Unable to send response. Unsupported flag provided.",
                pb_utils.TritonError.INVALID_ARG,
            )
        final = flags == pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if response is None and not final:
            raise pb_utils.TritonError(
                "Inference Response object must be provided when the response flags is "
                "set to zero.",
                pb_utils.TritonError.INVALID_ARG,
            )
        answer = (
            None
            if response is None
            else convert.to_server_response(
                self._request, response, model_version=self._version, requested=self._wanted
            )
        )
        try:
            self._stream.send(answer, final)
        except StreamClosed:
            raise pb_utils.TritonError(
                "Unable to send response. Response sender has been closed."
            ) from None


# --------------------------------------------------------------------------- backend


class PythonBackend(Backend):
    """Runs Triton Python backend models (``model.py`` with ``TritonPythonModel``)."""

    name = "python"

    def create_instance(
        self, context: ModelContext, instance_name: str, device_id: int
    ) -> PythonModelInstance:
        """Import the model file, create ``TritonPythonModel()`` and call ``initialize``."""
        return PythonModelInstance(context, instance_name, device_id)

    def auto_complete_config(
        self, config: ModelConfig, model_dir: Path, version: int, backend_config: dict[str, str]
    ) -> None:
        """Let ``TritonPythonModel.auto_complete_config`` complete ``config`` (in place)."""
        path = model_file(config, Path(model_dir) / str(version))
        label = config.name or Path(model_dir).name
        try:
            module = load_model_module(path, f"{label}_{version}_autocomplete")
        except Exception as exc:
            raise InternalError(
                f"failed to load the model file of model '{label}' for auto-complete: "
                f"{_format_exception(exc)}"
            ) from exc
        try:
            model_class = getattr(module, "TritonPythonModel", None)
            hook = getattr(model_class, "auto_complete_config", None)
            if not callable(hook):
                return
            original = config_to_dict(config)
            auto = pb_utils.ModelConfig(config_to_json(config).decode())
            try:
                result = hook(auto)
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from exc
            except Exception as exc:
                raise InternalError(
                    f"auto_complete_config of model '{label}' failed: {_format_exception(exc)}"
                ) from exc
            if result is None:
                result = auto
            if not isinstance(result, pb_utils.ModelConfig):
                raise InvalidArgument(
                    f"auto_complete_config function in model '{label}' must return a valid "
                    f"pb.ModelConfig object."
                )
            completed = result.as_dict()
            if completed == original:
                return
            parsed = ModelConfig()
            try:
                json_format.ParseDict(json.loads(json.dumps(completed)), parsed)
            except (json_format.ParseError, TypeError, ValueError) as exc:
                raise InvalidArgument(
                    f"auto_complete_config of model '{label}' produced an invalid "
                    f"configuration: {exc}"
                ) from exc
            config.CopyFrom(parsed)
        finally:
            unload_model_module(module)
