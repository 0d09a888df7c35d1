"""A request's keepalive deadline, usable before the request has a task of its own."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

_T = TypeVar("_T")


class Expired(Exception):
    """A request's keepalive deadline passed while it waited."""


class Deadline:
    """A point in loop time after which the future being waited on fails with Expired.

    It works without a task (the HTTP server runs a request eagerly until it first
    waits), unlike ``asyncio.timeout``, and costs one timer per request.
    """

    __slots__ = ("when", "expired", "_handle", "_future")

    def __init__(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self.when = when
        self.expired = False
        self._future: asyncio.Future[Any] | None = None
        self._handle = loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self.expired = True
        future = self._future
        if future is not None and not future.done():
            if isinstance(future, asyncio.Task):
                future.cancel()  # a task cannot be given an exception
            else:
                future.set_exception(Expired())

    async def wait(self, future: asyncio.Future[_T]) -> _T:
        """Await ``future``; Expired when the deadline passes first."""
        if self.expired:
            future.cancel()
            raise Expired()
        self._future = future
        try:
            return await future
        except asyncio.CancelledError:
            if self.expired and future.cancelled():
                raise Expired() from None
            raise
        finally:
            self._future = None

    def remaining(self, loop: asyncio.AbstractEventLoop) -> float:
        return self.when - loop.time()

    def cancel(self) -> None:
        self._handle.cancel()
