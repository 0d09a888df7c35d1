"""Runtimes that run service instances: :class:`LocalRuntime` (processes on this machine)."""

from openeas.platform.runtimes.base import Exit, Launch, Runtime
from openeas.platform.runtimes.local import LocalRuntime

__all__ = ["Exit", "Launch", "LocalRuntime", "Runtime"]
