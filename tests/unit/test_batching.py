"""Batch formation and queue policies of the scheduler, with a fake instance (no backend)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from openeas.protocol.errors import InvalidArgument
from openeas.protocol.types import InferRequest, InferResponse, Tensor
from openeas.server.backends.base import ExecResult, ExecTiming, ModelInstance
from openeas.server.batching import QueueConfig, select_batch
from openeas.server.repository.config import parse_config_text
from openeas.server.scheduler import QueueRejected, Scheduler
from openeas.server.stats import ModelStats


class Recorder(ModelInstance):
    """Records the request ids and total batch size of each execution.

    Executions block on a shared ``gate`` so a test can fill the queue first (except
    for batches with a request whose parameter ``nowait`` is set).
    """

    def __init__(self, log: list[tuple[list[str], int]], gate: threading.Event) -> None:
        self.log = log
        self.gate = gate

    def execute(self, requests: list[InferRequest], timing: ExecTiming) -> ExecResult:
        if not any(r.parameters.get("nowait") for r in requests):
            assert self.gate.wait(10)
        self.log.append(([r.id for r in requests], sum(r.inputs[0].shape[0] for r in requests)))
        return [InferResponse("fake", "1", r.id, list(r.inputs)) for r in requests]


def _request(rid: str, batch: int = 1, width: int = 2, **parameters: Any) -> InferRequest:
    data = np.zeros((batch, width), dtype=np.float32)
    return InferRequest(
        "fake",
        id=rid,
        inputs=[Tensor("INPUT0", "FP32", [batch, width], data)],
        parameters=parameters,
    )


class Harness:
    def __init__(self, config: str, instances: int = 1) -> None:
        self.log: list[tuple[list[str], int]] = []
        self.gate = threading.Event()
        self.stats = ModelStats()
        loop = asyncio.get_running_loop()
        self.scheduler = Scheduler(
            parse_config_text('name: "fake"\n' + config),
            "1",
            [(f"fake_{i}", Recorder(self.log, self.gate)) for i in range(instances)],
            self.stats,
            loop,
        )
        self.tasks: list[asyncio.Task[Any]] = []

    def submit(self, request: InferRequest) -> asyncio.Task[InferResponse]:
        batch = request.inputs[0].shape[0]
        task = asyncio.ensure_future(self.scheduler.infer(request, batch))
        self.tasks.append(task)
        return task

    async def until(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not met before the deadline"
            await asyncio.sleep(0.001)

    async def executing(self, count: int = 1) -> None:
        """Wait until ``count`` executions are blocked on the gate (queue drained to them)."""
        await self.until(lambda: sum(s.busy for s in self.scheduler._slots) >= count)

    async def close(self) -> None:
        self.gate.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.scheduler.close(5)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


# -- select_batch ------------------------------------------------------------------------


class _Item:
    def __init__(self, batch: int, width: int = 2) -> None:
        self.request = _request("x", batch, width)
        self.batch_size = batch


def test_select_batch_cuts_at_the_largest_preferred_size_reached() -> None:
    items = [_Item(1) for _ in range(7)]
    assert select_batch(items, 8, frozenset({2, 4})) == (4, True)
    assert select_batch(items[:3], 8, frozenset({2, 4})) == (2, True)
    assert select_batch(items[:1], 8, frozenset({2, 4})) == (1, False)


def test_select_batch_without_preferred_sizes_fills_up_to_max() -> None:
    items = [_Item(1) for _ in range(10)]
    assert select_batch(items, 8) == (8, True)
    assert select_batch(items[:3], 8) == (3, False)
    # the next request does not fit: ready with what fits
    assert select_batch([_Item(3), _Item(3), _Item(3)], 8) == (2, True)
    # a preferred size skipped over by a big request does not count
    assert select_batch([_Item(1), _Item(3)], 8, frozenset({2})) == (2, False)


def test_select_batch_stops_at_a_request_of_another_shape() -> None:
    assert select_batch([_Item(1), _Item(1, width=3), _Item(1)], 8) == (1, True)


def test_select_batch_without_batching_takes_one() -> None:
    assert select_batch([_Item(1), _Item(1)], 0) == (1, True)


def test_queue_config_levels_and_policies() -> None:
    config = parse_config_text(
        """
        name: "fake"
        max_batch_size: 4
        dynamic_batching {
          priority_levels: 3
          default_priority_level: 2
          default_queue_policy { max_queue_size: 7 }
          priority_queue_policy { key: 1 value: { timeout_action: DELAY default_timeout_microseconds: 5 } }
        }
        """
    )
    queues = QueueConfig.from_config(config)
    assert queues.priority_levels == 3 and queues.default_index == 1
    assert [p.max_size for p in queues.policies] == [0, 7, 7]
    assert not queues.policies[0].reject and queues.policies[0].default_timeout_ns == 5000
    assert queues.level_of(_request("a"), "fake") == 1
    assert queues.level_of(_request("a", priority=3), "fake") == 2
    with pytest.raises(InvalidArgument, match="priority 4"):
        queues.level_of(_request("a", priority=4), "fake")
    assert QueueConfig.from_config(parse_config_text('name: "x"')).trivial


# -- the scheduler ---------------------------------------------------------------------


def test_preferred_batch_sizes_cut_batches() -> None:
    async def test() -> None:
        h = Harness(
            """
            max_batch_size: 8
            dynamic_batching { preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 10000000 }
            """
        )
        h.submit(_request("first", batch=2))  # a preferred size: runs without waiting
        await h.executing()
        for i in range(6):
            h.submit(_request(f"r{i}"))
        await h.until(lambda: h.scheduler.pending == 7)
        h.gate.set()
        await asyncio.wait_for(asyncio.gather(*h.tasks), 5)
        assert [size for _, size in h.log] == [2, 4, 2]
        assert [ids for ids, _ in h.log][1:] == [["r0", "r1", "r2", "r3"], ["r4", "r5"]]
        assert h.stats.execution_count == 3 and h.stats.inference_count == 8
        assert set(h.stats.batches) == {2, 4}
        await h.close()

    run(test)


def test_full_batch_goes_at_once_and_the_delay_bounds_a_partial_one() -> None:
    async def test() -> None:
        h = Harness("max_batch_size: 4\ndynamic_batching { max_queue_delay_microseconds: 100000 }")
        h.gate.set()
        start = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(h.submit(_request(f"r{i}")) for i in range(4))), 5)
        assert h.log == [(["r0", "r1", "r2", "r3"], 4)]
        start = time.monotonic()
        await asyncio.wait_for(h.submit(_request("alone")), 5)
        assert time.monotonic() - start >= 0.09
        assert h.log[-1] == (["alone"], 1)
        await h.close()

    run(test)


def test_higher_priority_overtakes_queued_requests() -> None:
    async def test() -> None:
        h = Harness(
            """
            max_batch_size: 2
            dynamic_batching { priority_levels: 2 default_priority_level: 2 }
            """
        )
        h.submit(_request("busy", batch=2))
        await h.executing()
        h.submit(_request("low0", priority=2))
        h.submit(_request("low1"))  # default level: 2
        h.submit(_request("high", priority=1))
        await h.until(lambda: h.scheduler.pending == 4)
        h.gate.set()
        await asyncio.wait_for(asyncio.gather(*h.tasks), 5)
        assert [ids for ids, _ in h.log] == [["busy"], ["high", "low0"], ["low1"]]
        with pytest.raises(InvalidArgument, match="priority 3"):
            await h.scheduler.infer(_request("bad", priority=3), 1)
        await h.close()

    run(test)


def test_queue_size_limit_per_level() -> None:
    async def test() -> None:
        h = Harness(
            """
            max_batch_size: 1
            dynamic_batching {
              priority_levels: 2
              default_priority_level: 2
              default_queue_policy { max_queue_size: 2 }
              priority_queue_policy { key: 1 value: { max_queue_size: 1 } }
            }
            """
        )
        h.submit(_request("busy"))
        await h.executing()  # executing requests do not count against the queue
        h.submit(_request("a"))
        h.submit(_request("b"))
        h.submit(_request("h", priority=1))
        await h.until(lambda: h.scheduler.pending == 4)
        for request in (_request("c"), _request("h2", priority=1)):
            with pytest.raises(QueueRejected, match="^Exceeds maximum queue size$"):
                await h.scheduler.infer(request, 1)
        h.gate.set()
        await asyncio.wait_for(asyncio.gather(*h.tasks), 5)
        assert [ids for ids, _ in h.log] == [["busy"], ["h"], ["a"], ["b"]]
        await h.close()

    run(test)


def test_reject_timeout_fails_queued_request_while_the_instance_is_busy() -> None:
    async def test() -> None:
        h = Harness(
            """
            max_batch_size: 4
            dynamic_batching { default_queue_policy { allow_timeout_override: true } }
            """
        )
        h.submit(_request("busy", batch=4))
        await h.executing()
        doomed = h.submit(_request("doomed", timeout=20_000))
        kept = h.submit(_request("kept"))
        with pytest.raises(QueueRejected, match="^Request timeout expired$"):
            await asyncio.wait_for(doomed, 5)
        assert not h.gate.is_set()  # rejected on time, not when the instance came back
        h.gate.set()
        await asyncio.wait_for(kept, 5)
        assert [ids for ids, _ in h.log] == [["busy"], ["kept"]]
        await h.close()

    run(test)


def test_timeout_override_needs_permission_and_only_shortens() -> None:
    async def test() -> None:
        h = Harness(
            """
            max_batch_size: 4
            dynamic_batching { default_queue_policy { default_timeout_microseconds: 20000 } }
            """
        )
        h.submit(_request("busy", batch=4))
        await h.executing()
        # the override is not allowed: the default timeout (20 ms) applies
        doomed = h.submit(_request("doomed", timeout=60_000_000))
        with pytest.raises(QueueRejected, match="Request timeout expired"):
            await asyncio.wait_for(doomed, 5)
        h.gate.set()
        await h.close()

    run(test)


def test_delay_timeout_yields_to_requests_that_did_not_time_out() -> None:
    async def test() -> None:
        h = Harness(
            """
            max_batch_size: 1
            dynamic_batching {
              default_queue_policy { timeout_action: DELAY allow_timeout_override: true }
            }
            """
        )
        h.submit(_request("busy"))
        await h.executing()
        h.submit(_request("late", timeout=1))
        h.submit(_request("on_time"))
        await h.until(lambda: h.scheduler.pending == 3)
        await asyncio.sleep(0.002)  # let the 1 us timeout pass (not synchronisation)
        h.gate.set()
        await asyncio.wait_for(asyncio.gather(*h.tasks), 5)
        assert [ids for ids, _ in h.log] == [["busy"], ["on_time"], ["late"]]
        await h.close()

    run(test)


def test_cancelled_queued_request_leaves_the_queue() -> None:
    async def test() -> None:
        h = Harness(
            "max_batch_size: 1\ndynamic_batching { default_queue_policy { max_queue_size: 1 } }"
        )
        h.submit(_request("busy"))
        await h.executing()
        gone = h.submit(_request("gone"))
        await h.until(lambda: h.scheduler.pending == 2)
        gone.cancel()
        await h.until(lambda: h.scheduler.pending == 1)
        kept = h.submit(_request("kept"))  # the queue has room again
        h.gate.set()
        await asyncio.wait_for(kept, 5)
        assert [ids for ids, _ in h.log] == [["busy"], ["kept"]]
        await h.close()

    run(test)


def test_two_instances_both_execute_batches() -> None:
    async def test() -> None:
        h = Harness(
            """
            max_batch_size: 4
            dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 10000000 }
            """,
            instances=2,
        )
        h.submit(_request("a", batch=4))
        h.submit(_request("b", batch=4))
        await h.executing(2)  # both instances busy at once
        for i in range(8):
            h.submit(_request(f"r{i}"))
        await h.until(lambda: h.scheduler.pending == 10)
        h.gate.set()
        await asyncio.wait_for(asyncio.gather(*h.tasks), 5)
        assert sorted(size for _, size in h.log) == [4, 4, 4, 4]
        assert h.stats.execution_count == 4 and h.stats.inference_count == 16
        await h.close()

    run(test)


def test_preserve_ordering_releases_responses_in_arrival_order() -> None:
    async def test() -> None:
        config = "max_batch_size: 1\ndynamic_batching { %s }"
        for ordered in (True, False):
            h = Harness(config % ("preserve_ordering: true" if ordered else ""), instances=2)
            first = h.submit(_request("first"))
            await h.executing()
            second = h.submit(_request("second", nowait=True))  # runs on the other instance
            # recorded in the same step that hands its response over
            await h.until(lambda stats=h.stats: stats.execution_count == 1)
            if ordered:
                await asyncio.sleep(0.05)  # every chance to (wrongly) finish early
                assert not second.done()
            else:
                await h.until(second.done)
            assert not first.done()
            h.gate.set()
            await asyncio.wait_for(asyncio.gather(first, second), 5)
            assert [ids for ids, _ in h.log] == [["second"], ["first"]]
            await h.close()

    run(test)


# -- pieces shared by the schedulers ------------------------------------------------------


def test_in_order_holds_results_until_earlier_ones_are_released():
    from openeas.server.batching import InOrder

    order: InOrder[str] = InOrder()
    a, b, c = order.ticket(), order.ticket(), order.ticket()
    assert order.release(c, "c") == []
    assert order.release(b, "b") == []
    assert order.release(a, "a") == ["a", "b", "c"]
    d, e = order.ticket(), order.ticket()
    assert order.release(e, "e") == []
    assert order.drain() == ["e"]  # d never finished: e goes anyway at unload
    assert order.release(d, "d") == ["d"]


async def test_in_flight_counts_and_waits_for_idle():
    import asyncio

    from openeas.server.batching import InFlight

    inflight = InFlight()
    assert await inflight.wait_idle(0.01)
    inflight.enter()
    inflight.enter()
    assert inflight.count == 2
    assert not await inflight.wait_idle(0.01)
    waiter = asyncio.ensure_future(inflight.wait_idle(5))
    inflight.leave()
    await asyncio.sleep(0)
    assert not waiter.done()
    inflight.leave()
    assert await waiter
