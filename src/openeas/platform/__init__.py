"""The service platform: service specs, state, reconciler, runtimes and the REST API.

Layers, bottom up: :mod:`spec` (EAS service JSON), :mod:`store` (SQLite state),
:mod:`resources` and :mod:`runtimes` (where and how instances run), :mod:`reconciler`
(desired -> actual), :mod:`control` (operations), :mod:`api` (REST), :mod:`client` (its
Python client) and :mod:`daemon` (``openeas up``).
"""

from openeas.platform.client import PlatformClient
from openeas.platform.errors import PlatformError, SpecError
from openeas.platform.spec import ServiceSpec, validate_spec

__all__ = ["PlatformClient", "PlatformError", "ServiceSpec", "SpecError", "validate_spec"]
