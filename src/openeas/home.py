"""Where OpenEAS keeps its local state: ``$OPENEAS_HOME`` (default ``~/.openeas``).

Everything that persists on one machine lives under it: the embedded object store
(``buckets/``), the repository cache (``cache/``), the platform's database, credentials,
pid file and logs.  Every package finds the directory through :func:`openeas_home`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: Environment variable that moves the state directory.
HOME_ENV = "OPENEAS_HOME"


def openeas_home() -> Path:
    """The state directory (not created): ``$OPENEAS_HOME`` or ``~/.openeas``."""
    configured = os.environ.get(HOME_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".openeas"


#: Files under the state directory that hold secrets (service tokens, access keys).
SECRET_FILES = (
    "platform.db",
    "platform.db-wal",
    "platform.db-shm",
    "platform.db-journal",
    "credentials",
    "eascmd.json",
)
#: Directories under it with logs (a processor's log may echo what a client sent).
PRIVATE_DIRS = ("logs",)


def _tighten(path: Path, mode: int) -> str | None:
    """chmod ``path`` to ``mode`` when it grants more; what was fixed, or None."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if current & ~mode == 0:
        return None
    path.chmod(mode)
    return f"{path} was mode {current:04o}, now {mode:04o}"


def secure_home(home: Path | None = None) -> list[str]:
    """Make the state directory owner-only: itself and its log directories 0700, every
    secret file and every log file 0600.  Creates the directory if needed; returns one
    line per permission it had to fix (the platform logs them as warnings)."""
    home = home or openeas_home()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    fixed = [_tighten(home, 0o700)]
    fixed += [_tighten(home / name, 0o600) for name in SECRET_FILES]
    for name in PRIVATE_DIRS:
        top = home / name
        if not top.is_dir():
            continue
        fixed.append(_tighten(top, 0o700))
        for path in top.rglob("*"):
            if not path.is_symlink():
                fixed.append(_tighten(path, 0o700 if path.is_dir() else 0o600))
    return [line for line in fixed if line]
