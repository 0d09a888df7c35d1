"""The service platform: service specs, state, reconciler, runtimes and the REST API.

Layers, bottom up: :mod:`spec` (EAS service JSON), :mod:`store` (SQLite state),
:mod:`resources` and :mod:`runtimes` (where and how instances run), :mod:`reconciler`
(desired -> actual), :mod:`control` (operations), :mod:`api` (REST), :mod:`client` (its
Python client) and :mod:`daemon` (``openeas up``).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Re-exports, imported on first use: a gateway process that only needs
#: :mod:`openeas.platform.logs` does not pay for pydantic and httpx at start-up.
_EXPORTS = {
    "PlatformClient": "openeas.platform.client",
    "PlatformError": "openeas.platform.errors",
    "SpecError": "openeas.platform.errors",
    "ServiceSpec": "openeas.platform.spec",
    "validate_spec": "openeas.platform.spec",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'openeas.platform' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
