"""When the scheduler runs a cheap model inline on the event loop, and when it does not."""

from __future__ import annotations

import asyncio

import numpy as np

from openeas.protocol.types import InferRequest, InferResponse, Tensor
from openeas.server.backends.base import ExecResult, ExecTiming, ModelInstance
from openeas.server.repository.config import parse_config_text
from openeas.server.scheduler import (
    INLINE_BUDGET_NS,
    INLINE_SAMPLE_CAP_NS,
    INLINE_WARMUP,
    Scheduler,
    _Slot,
)
from openeas.server.stats import ModelStats

CONFIG = """
name: "fake"
max_batch_size: 8
dynamic_batching { }
"""


class Echo(ModelInstance):
    """Answers each request with its input; cheap enough to run inline."""

    inline_capable = True

    def execute(self, requests: list[InferRequest], timing: ExecTiming) -> ExecResult:
        return [InferResponse(r.model_name, "1", r.id, list(r.inputs)) for r in requests]


def _slot() -> _Slot:
    return _Slot("fake_0", Echo(), None)  # type: ignore[arg-type]  # no thread needed


def test_one_slow_sample_does_not_take_a_cheap_model_off_the_loop():
    slot = _slot()
    for _ in range(INLINE_WARMUP):
        slot.observe(10_000)
    assert slot.inline
    slot.observe(50_000_000)  # the OS ran something else for 50 ms mid-execution
    assert slot.inline
    assert slot.ewma_ns < INLINE_BUDGET_NS


def test_a_model_that_is_really_slow_leaves_the_loop():
    slot = _slot()
    for _ in range(INLINE_WARMUP):
        slot.observe(10_000)
    for _ in range(5):
        slot.observe(INLINE_SAMPLE_CAP_NS * 10)
    assert not slot.inline


def test_infer_now_runs_inline_only_when_the_queue_is_empty():
    async def main() -> None:
        config = parse_config_text(CONFIG)
        stats = ModelStats()
        loop = asyncio.get_running_loop()
        scheduler = Scheduler(config, "1", [("fake_0", Echo())], stats, loop)
        try:
            request = InferRequest(
                "fake", inputs=[Tensor("x", "FP32", [1, 1], np.ones((1, 1), np.float32))]
            )
            # warm-up executions go through the queue and the worker thread
            assert scheduler.infer_now(request, 1) is None
            for _ in range(INLINE_WARMUP):
                await scheduler.infer(request, 1)
            response = scheduler.infer_now(request, 1)
            assert response is not None and response.outputs[0].name == "x"
            assert stats.inference_count == INLINE_WARMUP + 1
            assert stats.queue.count == INLINE_WARMUP + 1
        finally:
            await scheduler.close(1)

    asyncio.run(main())
