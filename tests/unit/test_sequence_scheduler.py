"""The sequence scheduler's slot, backlog, idle and ordering rules, in-process.

The model instance is a small real implementation of the backend contract (an
accumulator that can be held at a gate), so the scheduler runs exactly as in the server.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from openeas.protocol.errors import InvalidArgument
from openeas.protocol.types import InferRequest, InferResponse, Tensor
from openeas.server.backends.base import ExecResult, ExecTiming, ModelInstance
from openeas.server.repository.config import parse_config_text
from openeas.server.sequence import SequenceScheduler
from openeas.server.stats import ModelStats

CONFIG = """
name: "acc"
max_batch_size: {max_batch}
input [ {{ name: "IN" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
sequence_batching {{
  {strategy}
  max_sequence_idle_microseconds: {idle_us}
  control_input [
    {{ name: "READY" control [ {{ kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] }} ] }}
  ]
  state [ {{ input_name: "ACC" output_name: "ACC_OUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
}}
"""


class Accumulator(ModelInstance):
    """OUT = ACC_OUT = ACC + IN; waits at ``gate`` for inputs < 0."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gate = threading.Event()
        self.batches: list[list[int]] = []

    def execute(self, requests: list[InferRequest], timing: ExecTiming) -> ExecResult:
        self.batches.append([int(r.input("READY").data.item()) for r in requests])
        responses: ExecResult = []
        for request in requests:
            value = request.input("IN").data
            if value.item() < 0:
                assert self.gate.wait(10)
            total = (request.input("ACC").data + value).astype(np.int32)
            responses.append(
                InferResponse(
                    "acc",
                    "1",
                    request.id,
                    [
                        Tensor("OUT", "INT32", list(total.shape), total),
                        Tensor("ACC_OUT", "INT32", list(total.shape), total),
                    ],
                )
            )
        return responses


def _request(sid: int, value: int, start: bool = False, end: bool = False) -> InferRequest:
    data = np.array([[value]], dtype=np.int32)
    return InferRequest(
        "acc",
        inputs=[Tensor("IN", "INT32", [1, 1], data)],
        parameters={"sequence_id": sid, "sequence_start": start, "sequence_end": end},
    )


def _scheduler(
    instances: list[Accumulator], max_batch: int = 1, strategy: str = "", idle_us: int = 10**6
) -> tuple[SequenceScheduler, ModelStats]:
    config = parse_config_text(
        CONFIG.format(max_batch=max_batch, strategy=strategy, idle_us=idle_us)
    )
    stats = ModelStats()
    scheduler = SequenceScheduler(
        config, "1", [(i.name, i) for i in instances], stats, asyncio.get_running_loop()
    )
    return scheduler, stats


async def _out(scheduler: SequenceScheduler, request: InferRequest) -> int:
    response = await scheduler.infer(request, 1)
    return int(response.output("OUT").data.item())


async def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_backlog_then_idle_release() -> None:
    """One slot: a second sequence waits until the first is released for being idle."""
    model = Accumulator("a")
    scheduler, stats = _scheduler([model], idle_us=200_000)
    try:
        assert await _out(scheduler, _request(1, 5, start=True)) == 5
        waiting = asyncio.ensure_future(_out(scheduler, _request(2, 7, start=True)))
        await _until(lambda: scheduler.pending == 1)
        assert not waiting.done()
        # sequence 1 gets no more requests: after 0.2 s idle its slot goes to sequence 2
        assert await asyncio.wait_for(waiting, 10) == 7
        with pytest.raises(InvalidArgument, match="sequence 1 .*START flag"):
            await scheduler.infer(_request(1, 1), 1)
        assert await _out(scheduler, _request(2, 1, end=True)) == 8
        assert scheduler.active_sequences == 0
        assert (stats.inference_count, stats.execution_count) == (3, 3)
    finally:
        await scheduler.close(5)


async def test_sequences_spread_over_instances_and_keep_order() -> None:
    """oldest + preserve_ordering: a later sequence's answer waits for an earlier one."""
    slow, fast = Accumulator("slow"), Accumulator("fast")
    scheduler, _ = _scheduler(
        [slow, fast],
        max_batch=2,
        strategy="oldest { max_candidate_sequences: 1 preserve_ordering: true }",
    )
    try:
        held = asyncio.ensure_future(_out(scheduler, _request(1, -1, start=True)))
        await _until(lambda: len(slow.batches) == 1)
        later = asyncio.ensure_future(_out(scheduler, _request(2, 3, start=True)))
        await _until(lambda: len(fast.batches) == 1)  # ran on the other instance
        await asyncio.sleep(0.05)
        assert not later.done()  # held back behind the earlier request
        slow.gate.set()
        assert await asyncio.wait_for(held, 10) == -1
        assert await asyncio.wait_for(later, 10) == 3
        # each sequence stays on its instance
        assert await _out(scheduler, _request(2, 1, end=True)) == 4
        assert await _out(scheduler, _request(1, 2, end=True)) == 1
        assert len(fast.batches) == 2 and len(slow.batches) == 2
    finally:
        await scheduler.close(5)


async def test_direct_batches_slots_and_a_cancelled_request_is_skipped() -> None:
    model = Accumulator("a")
    scheduler, stats = _scheduler([model], max_batch=3)
    try:
        model.gate.set()
        assert await _out(scheduler, _request(1, -1, start=True)) == -1
        model.gate.clear()
        assert await _out(scheduler, _request(2, 10, start=True)) == 10
        assert model.batches[-1] == [0, 1]  # slot 0 idle: a null request
        blocker = asyncio.ensure_future(_out(scheduler, _request(1, -1)))
        await _until(lambda: len(model.batches) == 3)
        cancelled = asyncio.ensure_future(_out(scheduler, _request(2, 100)))
        kept = asyncio.ensure_future(_out(scheduler, _request(2, 1, end=True)))
        await _until(lambda: scheduler.pending == 3)
        cancelled.cancel()
        model.gate.set()
        assert await asyncio.wait_for(blocker, 10) == -2
        # the cancelled request never executed: the sequence's state does not have it
        assert await asyncio.wait_for(kept, 10) == 11
        assert stats.inference_count == 4
    finally:
        await scheduler.close(5)
