"""An instance's internal token: a platform instance answers its gateway only.

The platform starts each instance with a random token in :data:`ENV`; the processor then
requires the :data:`HEADER` header (HTTP) or metadata (gRPC) with that value on every
request, and the gateway adds it to everything it forwards.  The token never leaves the
platform's user: it is in the instance's environment (``/proc/<pid>/environ`` is readable
by that user only), in the owner-only ``platform.db`` and in the gateway's memory.  An
``openeas-server`` started without the variable (standalone) is as open as Triton.

The check is one header comparison per request (and per gRPC call).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable

ENV = "OPENEAS_INSTANCE_TOKEN"
HEADER = b"x-openeas-instance-token"
REFUSED = (
    "this instance serves its platform's gateway only: send requests to the gateway "
    "(x-openeas-instance-token missing or wrong)"
)


def from_environment() -> bytes | None:
    """The token this process must require, taken out of the environment (so that the
    processes it starts do not inherit it); None when it runs standalone."""
    value = os.environ.pop(ENV, "")
    return value.encode() if value else None


def carries(headers: Iterable[tuple[bytes, bytes]], token: bytes) -> bool:
    """True when ``headers`` (lower-case names) hold ``token`` under :data:`HEADER`."""
    return any(name == HEADER and hmac.compare_digest(value, token) for name, value in headers)
