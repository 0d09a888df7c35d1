"""Keepalive deadlines: one per awaiting request, or many callback-style ones on one timer."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, TypeVar

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


class Expirable(Protocol):
    """Something with a deadline in :class:`Timeouts`."""

    def expire(self) -> None:
        """Its deadline passed (it has been removed from the :class:`Timeouts`)."""


class Timeouts:
    """Many deadlines on one loop timer, armed for the earliest of them.

    Adding and removing an entry is a dict operation, against a timer handle created
    and cancelled per request with ``loop.call_at``; the timer fires only when the
    earliest deadline passes (or after that entry is gone, which rescans and re-arms).
    """

    __slots__ = ("_loop", "_entries", "_handle", "_armed_at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._entries: dict[Expirable, float] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, item: Expirable, when: float) -> None:
        """Call ``item.expire()`` at loop time ``when`` unless removed before."""
        self._entries[item] = when
        if self._handle is None or when < self._armed_at:
            self._arm(when)

    def remove(self, item: Expirable) -> None:
        """Forget ``item`` (no effect when it is not there)."""
        self._entries.pop(item, None)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self._loop.time()
        entries = self._entries
        due = [item for item, when in entries.items() if when <= now]
        for item in due:
            del entries[item]
        if entries:
            self._arm(min(entries.values()))
        for item in due:
            item.expire()
