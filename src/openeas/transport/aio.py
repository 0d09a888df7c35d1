"""Small asyncio helpers shared by the long-running loops of every layer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set (True) or ``timeout`` seconds pass (False).

    Not ``asyncio.wait_for(event.wait(), timeout)``: on Python 3.11 that swallows a
    cancellation which arrives as the event is set (CPython gh-86296, fixed in 3.12), so
    a loop that waits this way and is cancelled at shutdown can go on for ever, and its
    ``await task`` with it.  ``asyncio.timeout`` has no such window (and creates no task).
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def tick_forever(
    tick: Callable[[], Awaitable[None]],
    wake: asyncio.Event,
    period: float,
    logger: logging.Logger,
    what: str,
) -> None:
    """Await ``tick()`` now and then every ``period`` seconds, or at once when ``wake`` is
    set; a tick that fails is logged and the next one runs (until cancelled)."""
    while True:
        try:
            await tick()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s failed", what)
        await wait_event(wake, period)
        wake.clear()


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (None: nothing to do) and wait until it has ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
