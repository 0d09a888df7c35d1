"""Runtimes that run service instances: :class:`LocalRuntime` (processes on this machine)."""

from openeas.platform.runtimes.base import Address, Exit, Launch, Runtime, StartError
from openeas.platform.runtimes.local import LocalRuntime

__all__ = ["Address", "Exit", "Launch", "LocalRuntime", "Runtime", "StartError"]
