"""Resolve a service version's model repositories before its instances start.

Every ``--model-repository`` of the processor flags is checked once per service version:
object-store URIs (``oss://``, ``s3://``) are synchronised into the shared cache through
:mod:`openeas.storage` (the instances then only re-check ETags), local paths must exist.
A ``storage[]`` mount turns a repository under its ``mount_path`` into the mounted URI.
"""

from __future__ import annotations

from pathlib import Path

from openeas import processor_flags
from openeas.platform.spec import ServiceSpec

_URI_SCHEMES = ("oss://", "s3://")


class RepositoryError(Exception):
    """A repository could not be resolved; the message is the service's failure reason."""


def _apply_mounts(value: str, spec: ServiceSpec) -> str:
    for mount in sorted(spec.storage, key=lambda m: len(m.mount_path), reverse=True):
        root = mount.mount_path
        if value == root or value.startswith(root.rstrip("/") + "/"):
            rest = value[len(root) :].strip("/")
            base = mount.oss.path.rstrip("/")
            return f"{base}/{rest}" if rest else base
    return value


def resolved_params(spec: ServiceSpec) -> list[str]:
    """The processor flags with mounted paths replaced by their object-store URIs (each
    repository as one ``--model-repository=<value>``)."""
    params = spec.processor_params
    found = {
        flag.flag_index: flag
        for flag in processor_flags.flag_values(params, processor_flags.REPOSITORY_FLAGS)
    }
    out: list[str] = []
    skip = -1
    for i, param in enumerate(params):
        if i == skip:
            continue
        flag = found.get(i)
        if flag is None:
            out.append(param)
        else:
            skip = flag.value_index
            out.append(f"--model-repository={_apply_mounts(flag.value, spec)}")
    return out


def sync_repositories(params: list[str]) -> None:
    """Synchronise (URIs) or check (paths) every repository; :class:`RepositoryError`."""
    for param in params:
        flag, _, value = param.partition("=")
        if flag != "--model-repository":
            continue
        if value.startswith(_URI_SCHEMES):
            try:
                from openeas.storage import sync_repository
            except ImportError as exc:
                raise RepositoryError(
                    f"cannot read {value}: the object-store layer is not available ({exc})"
                ) from None
            try:
                sync_repository(value)
            except Exception as exc:  # every storage error becomes the failure reason
                raise RepositoryError(f"cannot synchronize {value}: {exc}") from None
        else:
            path = Path(value.removeprefix("file://"))
            if not path.is_absolute():
                raise RepositoryError(
                    f"model repository {value!r} is a relative path; use an absolute path or an oss:// URI"
                )
            if not path.is_dir():
                raise RepositoryError(f"model repository {value} does not exist")
