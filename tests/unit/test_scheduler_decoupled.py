"""The scheduler's decoupled path with a fake decoupled instance (no backend)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from openeas.protocol.errors import InternalError, Unavailable
from openeas.protocol.types import InferRequest, InferResponse, Tensor
from openeas.server.backends.base import ExecResult, ExecTiming, ModelInstance, ResponseStream
from openeas.server.repository.config import parse_config_text
from openeas.server.scheduler import Scheduler
from openeas.server.stats import ModelStats

CONFIG = """
name: "fake"
max_batch_size: 0
model_transaction_policy { decoupled: true }
"""


class FakeDecoupled(ModelInstance):
    """Answers each request ``n`` times (n = its INPUT0) from a thread, then final."""

    decoupled = True

    def __init__(self) -> None:
        self.executions = 0
        self.gate = threading.Event()
        self.gate.set()
        self.threads: list[threading.Thread] = []

    def execute(self, requests: list[InferRequest], timing: ExecTiming) -> ExecResult:
        raise AssertionError("a decoupled instance is never executed unary")

    def execute_decoupled(
        self, requests: list[InferRequest], streams: list[ResponseStream], timing: ExecTiming
    ) -> None:
        self.executions += 1
        self.gate.wait(5)
        for request, stream in zip(requests, streams, strict=True):
            count = int(request.inputs[0].data[0])
            if count < 0:
                raise InternalError("negative")
            thread = threading.Thread(target=self._answer, args=(request, stream, count))
            thread.start()
            self.threads.append(thread)

    @staticmethod
    def _answer(request: InferRequest, stream: ResponseStream, count: int) -> None:
        for index in range(count):
            data = np.array([index], dtype=np.int32)
            stream.send(InferResponse("fake", "1", request.id, [Tensor("OUT", "INT32", [1], data)]))
        stream.send(None, True)


def _request(count: int, rid: str = "") -> InferRequest:
    data = np.array([count], dtype=np.int32)
    return InferRequest("fake", id=rid, inputs=[Tensor("INPUT0", "INT32", [1], data)])


async def _collect(scheduler: Scheduler, request: InferRequest) -> list:
    return [item async for item in scheduler.stream(request, 1)]


def test_stream_yields_every_response_and_frees_the_instance() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        instance = FakeDecoupled()
        stats = ModelStats()
        scheduler = Scheduler(parse_config_text(CONFIG), "1", [("fake_0", instance)], stats, loop)
        assert scheduler.decoupled
        first, second = await asyncio.gather(
            _collect(scheduler, _request(3, "a")), _collect(scheduler, _request(0, "b"))
        )
        assert [(r.id, r.outputs[0].data.tolist(), f) for r, f in first[:3]] == [
            ("a", [0], False),
            ("a", [1], False),
            ("a", [2], False),
        ]
        assert first[3] == (None, True) and second == [(None, True)]
        # a request can see its final response before its execution is recorded
        for _ in range(100):
            if stats.execution_count == 2:
                break
            await asyncio.sleep(0.01)
        assert instance.executions == 2 and stats.execution_count == 2
        failed = await _collect(scheduler, _request(-1))
        assert len(failed) == 1 and isinstance(failed[0][0], InternalError) and failed[0][1]
        assert scheduler.pending == 0
        await scheduler.close(1)
        with pytest.raises(Unavailable):
            await _collect(scheduler, _request(1))

    asyncio.run(run())


def test_closing_the_iterator_cancels_the_request() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        instance = FakeDecoupled()
        instance.gate.clear()  # the first execution blocks the only instance
        scheduler = Scheduler(
            parse_config_text(CONFIG), "1", [("fake_0", instance)], ModelStats(), loop
        )
        running = asyncio.create_task(_collect(scheduler, _request(1, "running")))
        await asyncio.sleep(0.05)
        queued = scheduler.stream(_request(1, "queued"), 1)
        waiting = asyncio.create_task(anext(queued))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await queued.aclose()
        instance.gate.set()
        assert [f for _, f in await running] == [False, True]
        await asyncio.sleep(0.05)
        assert instance.executions == 1  # the cancelled request never executed
        assert scheduler.pending == 0
        await scheduler.close(1)

    asyncio.run(run())
