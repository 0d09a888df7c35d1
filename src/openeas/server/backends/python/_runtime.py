"""Ambient state shared by the Python backend and ``triton_python_backend_utils``.

A model builds BLS requests with ``pb_utils.InferenceRequest(...)`` and nothing ties
that object to the model instance that created it, so ``exec()`` finds the server's
:class:`InferenceHandle` here: the instance whose ``initialize``/``execute``/``finalize``
is running sets itself as the current one (a context variable, so asyncio tasks that
the model starts inherit it).  Threads that a model starts itself do not inherit
context variables; they fall back to the handle of the most recently loaded instance
(all instances of one server share the same handle).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from openeas.server.backends.base import InferenceHandle


@dataclass(frozen=True, slots=True)
class InstanceRuntime:
    """What pb_utils may need to know about the instance that is running model code."""

    model_name: str
    instance_name: str
    handle: InferenceHandle | None


_CURRENT: ContextVar[InstanceRuntime | None] = ContextVar(
    "openeas_python_backend_instance", default=None
)
_default_handle: InferenceHandle | None = None


def set_default_handle(handle: InferenceHandle | None) -> None:
    """Remember the handle for BLS calls made outside any instance's context."""
    global _default_handle
    if handle is not None:
        _default_handle = handle


def current_handle() -> InferenceHandle | None:
    """The handle BLS requests should use from the calling context."""
    runtime = _CURRENT.get()
    if runtime is not None and runtime.handle is not None:
        return runtime.handle
    return _default_handle


@contextmanager
def activate(runtime: InstanceRuntime) -> Iterator[None]:
    """Make ``runtime`` the current instance for the duration of the block."""
    token = _CURRENT.set(runtime)
    try:
        yield
    finally:
        _CURRENT.reset(token)


class InlineInstance(Protocol):
    """An instance that may run its model code without the ambient context."""

    def revoke_inline(self, reason: str) -> None: ...


class _InlineState(threading.local):
    owner: InlineInstance | None = None


_inline = _InlineState()


def call_inline(owner: InlineInstance, function: Callable[..., Any], *args: Any) -> Any:
    """Call model code of an inline-capable instance, remembering it for this thread.

    Cheaper than :func:`activate` (the hot path of small Python models). If the model
    turns out to make a blocking BLS call after all (from a helper module that the
    source check did not see), :func:`revoke_current_inline` finds the instance.
    """
    state = _inline
    previous = state.owner
    state.owner = owner
    try:
        return function(*args)
    finally:
        state.owner = previous


def revoke_current_inline(reason: str) -> bool:
    """Stop the instance whose code runs inline on this thread from running inline."""
    owner = _inline.owner
    if owner is None:
        return False
    owner.revoke_inline(reason)
    return True
