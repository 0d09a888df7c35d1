"""Running a request's coroutine eagerly: its first step at once, a task only if it waits.

Most requests to cheap models complete without ever suspending, so creating and
scheduling a task for each would cost more than the request itself, and a loop turn of
latency (Python 3.12's eager task factory does the same; this server runs on 3.11 too).
Both front ends start their handlers this way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def start_eagerly(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
) -> asyncio.Task[None] | None:
    """Run ``coro`` until it first waits, then as a task (returned; cancel it to cancel
    the coroutine).  None when it finished at once.  What its first step raises is
    raised here; its return value is dropped.
    """
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return loop.create_task(_resume(coro, waiting))


async def _resume(coro: Any, waiting: Any) -> None:
    """Drive a coroutine that suspended during its eager first step, as a task would.

    ``waiting`` is what it yielded: the future it awaits (or None for a bare yield).  The
    future's outcome reaches the coroutine when it is resumed, so it is not looked at here.
    """
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                waiting._asyncio_future_blocking = False  # as Task.__step does
                await waiting
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                coro.throw(asyncio.CancelledError())
        except BaseException:  # noqa: S110 - delivered to the coroutine on resume
            pass
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
