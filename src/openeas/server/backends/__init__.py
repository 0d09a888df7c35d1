"""Backends: the code that runs a model.  They know nothing about HTTP or gRPC.

Each backend is looked up by the name in ``config.pbtxt`` (``backend`` or implied by
``platform``) and imported only when a model needs it, so a missing framework is a
per-model load error, not a server start-up failure.
"""

from __future__ import annotations

import importlib

from openeas.protocol.errors import InvalidArgument, Unavailable
from openeas.server.backends.base import Backend

#: backend name -> (module, class, pip extra that provides its framework)
_REGISTRY: dict[str, tuple[str, str, str]] = {
    "onnxruntime": ("openeas.server.backends.onnxruntime", "OnnxRuntimeBackend", ""),
    "python": ("openeas.server.backends.python", "PythonBackend", ""),
    "tensorflow": ("openeas.server.backends.tensorflow", "TensorFlowBackend", "tensorflow"),
    "pytorch": ("openeas.server.backends.pytorch", "PyTorchBackend", "pytorch"),
}

_LOADED: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The (cached) backend object for a backend name; clear errors when it is missing."""
    if name in _LOADED:
        return _LOADED[name]
    if name not in _REGISTRY:
        raise InvalidArgument(f"unable to find backend '{name}'")
    module_name, class_name, extra = _REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"; install it with: pip install 'openeas[{extra}]'" if extra else ""
        raise Unavailable(f"backend '{name}' is not available: {exc}{hint}") from None
    backend = getattr(module, class_name)()
    _LOADED[name] = backend
    return backend
