"""Where OpenEAS keeps its local state: ``$OPENEAS_HOME`` (default ``~/.openeas``).

Everything that persists on one machine lives under it: the embedded object store
(``buckets/``), the repository cache (``cache/``), the platform's database, credentials,
pid file and logs.  Every package finds the directory through :func:`openeas_home`.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that moves the state directory.
HOME_ENV = "OPENEAS_HOME"


def openeas_home() -> Path:
    """The state directory (not created): ``$OPENEAS_HOME`` or ``~/.openeas``."""
    configured = os.environ.get(HOME_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".openeas"
