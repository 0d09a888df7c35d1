"""transport.aio.wait_event: an event wait with a timeout that never loses a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from openeas.transport.aio import wait_event


async def test_set_and_timeout() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True


async def test_a_cancellation_arriving_as_the_event_is_set_is_not_lost() -> None:
    """asyncio.wait_for on Python 3.11 returns normally here (gh-86296): a loop cancelled
    at shutdown that way never ends."""
    event = asyncio.Event()
    task = asyncio.create_task(wait_event(event, 10))
    await asyncio.sleep(0)  # the task now waits on the event
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
