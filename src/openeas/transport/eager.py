"""Running a request's coroutine eagerly: its first step at once, a task only if it waits.

Most requests to cheap models complete without ever suspending, so creating and
scheduling a task for each would cost more than the request itself, and a loop turn of
latency (Python 3.12's eager task factory does the same; this server runs on 3.11 too).
Both front ends start their handlers this way.

A task cancelled before its first step never runs its coroutine's body at all, so the
request's coroutine would stay suspended where its eager step left it (holding a
scheduler slot or a queue place) until the garbage collector closed it; a client that
opens and at once resets calls (HTTP/2 "rapid reset", CVE-2023-44487) would pile those
up.  A done callback delivers that cancellation to the coroutine instead.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


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
    task = loop.create_task(_resume(coro, waiting))
    task.add_done_callback(functools.partial(_cancel_unstarted, loop, coro, waiting))
    return task


async def _resume(coro: Any, waiting: Any) -> None:
    """Drive a coroutine that suspended during its eager first step, as a task would.

    ``waiting`` is what it yielded: the future it awaits (or None for a bare yield).  The
    future's outcome reaches the coroutine when it is resumed, so it is not looked at here;
    a cancellation of this task is thrown into it.
    """
    while True:
        error: BaseException | None = None
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                waiting._asyncio_future_blocking = False  # as Task.__step does
                await waiting
        except asyncio.CancelledError as exc:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                error = exc
        except BaseException:  # noqa: S110 - delivered to the coroutine on resume
            pass
        try:
            waiting = coro.send(None) if error is None else coro.throw(error)
        except StopIteration:
            return


def _cancel_unstarted(
    loop: asyncio.AbstractEventLoop, coro: Any, waiting: Any, task: asyncio.Task[None]
) -> None:
    """``task`` is over: if it was cancelled before it ever ran, cancel ``coro`` where it
    waits (its ``finally`` blocks release what it holds), and let it finish if its
    cleanup has to wait for something."""
    if inspect.getcoroutinestate(coro) != inspect.CORO_SUSPENDED:
        return  # _resume ran it to the end
    if isinstance(waiting, asyncio.Future):
        waiting.cancel()  # as a cancelled task cancels the future it waits for
    try:
        waiting = coro.throw(asyncio.CancelledError())
    except (StopIteration, asyncio.CancelledError):
        return
    except Exception:
        log.exception("a cancelled request failed in its cleanup")
        return
    loop.create_task(_resume(coro, waiting))
