"""A dedicated worker thread per model instance.

Each instance executes on its own thread so that one model instance never runs two
executions at once, and so that backends may keep thread-affine state (sessions, event
loops).  Results are handed back to the server's event loop with one
``call_soon_threadsafe``; this is cheaper than a general executor on the hot path.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_STOP = object()


class WorkerThread:
    """Runs submitted callables one at a time on one thread."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Schedule ``fn(*args)`` on the thread; await the returned future on the loop."""
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((future, fn, args))
        return future

    def stop(self) -> None:
        """Let the thread finish the work queued so far, then exit."""
        self._queue.put(_STOP)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            future, fn, args = item
            try:
                result = fn(*args)
            except BaseException as exc:  # delivered to the awaiting coroutine
                if future is not None:
                    self._deliver(future, None, exc)
            else:
                if future is not None:
                    self._deliver(future, result, None)

    def _deliver(self, future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
        try:
            self._loop.call_soon_threadsafe(_settle, future, result, exc)
        except RuntimeError:  # loop closed during shutdown
            pass


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
