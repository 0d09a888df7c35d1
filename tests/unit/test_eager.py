"""Eager start of request coroutines (``transport/eager.py``), cancellation above all."""

from __future__ import annotations

import asyncio

from openeas.transport.eager import start_eagerly


async def _held(slot: asyncio.Future[None], log: list[str], cleanup_wait: bool = False) -> None:
    log.append("start")
    try:
        await slot
        log.append("done")
    except asyncio.CancelledError:
        log.append("cancelled")
        if cleanup_wait:
            await asyncio.sleep(0)  # cleanup that itself waits
            log.append("cleaned")
        raise
    finally:
        log.append("released")


async def _until(predicate: object, turns: int = 20) -> None:
    for _ in range(turns):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def test_finishes_without_a_task_when_it_never_waits() -> None:
    async def quick() -> None:
        return None

    async def run() -> None:
        assert start_eagerly(asyncio.get_running_loop(), quick()) is None

    asyncio.run(run())


def test_resumes_when_what_it_waits_for_is_done() -> None:
    async def run() -> None:
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        log: list[str] = []
        task = start_eagerly(asyncio.get_running_loop(), _held(slot, log))
        assert task is not None and log == ["start"]
        slot.set_result(None)
        await task
        assert log == ["start", "done", "released"]

    asyncio.run(run())


def test_cancel_before_the_task_ever_ran_releases_at_once() -> None:
    """The rapid-reset case: cancelled in the same loop turn as it was started."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        slot: asyncio.Future[None] = loop.create_future()
        log: list[str] = []
        task = start_eagerly(loop, _held(slot, log))
        assert task is not None
        task.cancel()  # before its first step
        await _until(lambda: "released" in log)
        assert log == ["start", "cancelled", "released"]
        assert slot.cancelled()  # what it waited for is cancelled, as a task would do

    asyncio.run(run())


def test_cancel_before_the_task_ran_lets_a_waiting_cleanup_finish() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        slot: asyncio.Future[None] = loop.create_future()
        log: list[str] = []
        task = start_eagerly(loop, _held(slot, log, cleanup_wait=True))
        assert task is not None
        task.cancel()
        await _until(lambda: "released" in log)
        assert log == ["start", "cancelled", "cleaned", "released"]

    asyncio.run(run())


def test_cancel_while_waiting_cancels_the_coroutine() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        slot: asyncio.Future[None] = loop.create_future()
        log: list[str] = []
        task = start_eagerly(loop, _held(slot, log, cleanup_wait=True))
        assert task is not None
        await asyncio.sleep(0)  # the task runs and waits
        await asyncio.sleep(0)
        task.cancel()
        await _until(lambda: task.done())
        assert task.cancelled()
        assert log == ["start", "cancelled", "cleaned", "released"]

    asyncio.run(run())
