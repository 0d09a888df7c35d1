"""Triton's Python backend, run in-process (``backend: "python"`` models).

Models are ``model.py`` files with a ``TritonPythonModel`` class, exactly as for
Triton; ``import triton_python_backend_utils as pb_utils`` gives
:mod:`openeas.server.backends.python.triton_python_backend_utils`.
"""

from __future__ import annotations

from openeas.server.backends.python.backend import (
    PythonBackend,
    PythonModelInstance,
    install_pb_utils,
    load_model_module,
)

__all__ = ["PythonBackend", "PythonModelInstance", "install_pb_utils", "load_model_module"]
