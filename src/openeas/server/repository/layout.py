"""The on-disk layout of Triton model repositories.

``<root>/<model>/config.pbtxt`` plus numeric version directories.  Directories whose
name is not a number, or starts with ``0``, are not versions.  Several roots may be
served at once; a model name must be unique across them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from openeas.protocol.errors import InvalidArgument, NotFound
from openeas.server.repository.config import ModelConfig, parse_config_text

CONFIG_FILE = "config.pbtxt"


def list_models(roots: list[Path]) -> dict[str, Path]:
    """Map every model name found under ``roots`` to its directory.

    Raises InvalidArgument when two roots hold a model of the same name, as Triton does.
    """
    models: dict[str, Path] = {}
    for root in roots:
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            if entry.name in models:
                raise InvalidArgument(
                    f"model '{entry.name}' exists in multiple model repositories: "
                    f"{models[entry.name].parent} and {root}"
                )
            models[entry.name] = Path(entry.path)
    return models


def find_model(roots: list[Path], name: str) -> Path:
    check_model_name(name)
    found = [root / name for root in roots if (root / name).is_dir()]
    if not found:
        raise NotFound(f"failed to load '{name}', failed to poll from model repository")
    if len(found) > 1:
        raise InvalidArgument(f"model '{name}' exists in multiple model repositories")
    return found[0]


def check_model_name(name: str) -> None:
    """Reject names that are empty or could escape the repository."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise InvalidArgument(f"invalid model name '{name}'")


def version_dirs(model_dir: Path) -> list[int]:
    """The available version numbers of a model, ascending."""
    versions: list[int] = []
    try:
        entries = list(os.scandir(model_dir))
    except FileNotFoundError:
        return versions
    for entry in entries:
        name = entry.name
        if entry.is_dir() and name.isdigit() and not name.startswith("0"):
            versions.append(int(name))
    return sorted(versions)


def read_config(model_dir: Path) -> ModelConfig | None:
    """Parse ``config.pbtxt`` of a model directory; None when the file is absent."""
    path = model_dir / CONFIG_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"failed to read {path}: {exc}") from None
    return parse_config_text(text, str(path))


def tree_signature(path: Path) -> str:
    """A cheap fingerprint of a directory tree (names, sizes, mtimes) for change polling."""
    digest = hashlib.blake2b(digest_size=16)
    if not path.exists():
        return ""
    for dirpath, dirnames, filenames in os.walk(path):
        # Python models write their bytecode cache next to model.py when imported; that
        # is not a change to the model.
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except FileNotFoundError:
                continue
            digest.update(f"{os.path.relpath(full, path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()
