"""Small asyncio helpers shared by the long-running loops of every layer."""

from __future__ import annotations

import asyncio


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
