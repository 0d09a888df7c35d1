"""Request scheduling for one model version: a queue in front of the model's instances.

Each instance has a worker coroutine on the event loop that takes work from the shared
queue and runs it on the instance's own thread.  With ``dynamic_batching`` (and
``max_batch_size > 0``) a worker takes every queued request that fits into one batch
(same non-batch shapes, total batch size <= ``max_batch_size``), waiting up to
``max_queue_delay_microseconds`` for more when the batch is not full; otherwise each
request executes alone.

Decoupled models (:attr:`ModelInstance.decoupled`) go through :meth:`Scheduler.stream`:
an execution ends when ``execute_decoupled`` returns (the instance takes the next batch)
while its requests stay open until the model sends their final flag.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from openeas.protocol.errors import InferenceError, InternalError, Unavailable
from openeas.protocol.types import InferRequest, InferResponse
from openeas.server.backends.base import (
    ExecResult,
    ExecTiming,
    ModelInstance,
    ResponseStream,
    StreamItem,
)
from openeas.server.repository.config import ModelConfig
from openeas.server.stats import ModelStats
from openeas.server.workers import WorkerThread

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    request: InferRequest
    batch_size: int
    future: asyncio.Future[InferResponse]
    enqueued_ns: int = field(default_factory=time.monotonic_ns)
    #: Where a decoupled model's responses go (None for other models).
    stream: ResponseStream | None = None


#: Executions whose running average stays under this run inline on the event loop.
INLINE_BUDGET_NS = 250_000
#: Executions measured on the worker thread before an instance may go inline.
INLINE_WARMUP = 8
_EWMA_ALPHA = 0.1


class _Slot:
    """One model instance, its worker thread and how long its executions take."""

    __slots__ = ("name", "instance", "thread", "busy", "ewma_ns", "samples")

    def __init__(self, name: str, instance: ModelInstance, thread: WorkerThread) -> None:
        self.name = name
        self.instance = instance
        self.thread = thread
        self.busy = False
        self.ewma_ns = 0.0
        self.samples = 0

    @property
    def inline(self) -> bool:
        return (
            self.instance.inline_capable
            and self.samples >= INLINE_WARMUP
            and self.ewma_ns < INLINE_BUDGET_NS
        )

    def observe(self, duration_ns: int) -> None:
        if self.samples == 0:
            self.ewma_ns = float(duration_ns)
        else:
            self.ewma_ns += _EWMA_ALPHA * (duration_ns - self.ewma_ns)
        self.samples += 1


def _timed_execute(
    instance: ModelInstance, requests: list[InferRequest], timing: ExecTiming
) -> tuple[ExecResult, int]:
    start = time.perf_counter_ns()
    results = instance.execute(requests, timing)
    return results, time.perf_counter_ns() - start


def _timed_execute_decoupled(
    instance: ModelInstance,
    requests: list[InferRequest],
    streams: list[ResponseStream],
    timing: ExecTiming,
) -> int:
    start = time.perf_counter_ns()
    instance.execute_decoupled(requests, streams, timing)
    return time.perf_counter_ns() - start


class Scheduler:
    """Queues requests for one model version and executes them on its instances.

    Executions normally run on the instance's worker thread.  An instance whose backend
    allows it (:attr:`ModelInstance.inline_capable`) and whose executions measure under
    :data:`INLINE_BUDGET_NS` runs them inline on the event loop instead: for cheap models
    the thread hand-off costs more than the model.  A request that finds such an instance
    idle and nothing queued executes at once, without going through the queue.
    """

    def __init__(
        self,
        config: ModelConfig,
        version: str,
        instances: list[tuple[str, ModelInstance]],
        stats: ModelStats,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._config = config
        self._version = version
        self._stats = stats
        self._loop = loop
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        #: The instances are decoupled (the backend honours the decoupled transaction
        #: policy): requests go through stream(), never infer().
        self.decoupled = any(instance.decoupled for _, instance in instances)
        #: Streams of decoupled requests that have not seen their final flag yet.
        self._streams: set[ResponseStream] = set()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

        batching = config.max_batch_size > 0 and config.HasField("dynamic_batching")
        self._max_batch = config.max_batch_size if batching else 0
        self._delay_s = (
            config.dynamic_batching.max_queue_delay_microseconds / 1e6 if batching else 0.0
        )
        policy = config.dynamic_batching.default_queue_policy
        self._max_queue = policy.max_queue_size if batching else 0

        self._slots = [
            _Slot(name, instance, WorkerThread(name, loop)) for name, instance in instances
        ]
        self._tasks = [loop.create_task(self._worker(slot)) for slot in self._slots]

    @property
    def pending(self) -> int:
        """Requests waiting in the queue or executing."""
        return self._inflight

    async def infer(self, request: InferRequest, batch_size: int) -> InferResponse:
        """Queue ``request`` and wait for its response (raises InferenceError)."""
        if self._closed:
            raise Unavailable(f"model '{self._config.name}' is unloading")
        if not self._queue and not self._delay_s:
            for slot in self._slots:
                if not slot.busy and slot.inline:
                    return self._run_inline_now(slot, request, batch_size)
        if self._max_queue and len(self._queue) >= self._max_queue:
            raise Unavailable("Exceeds maximum queue size")
        future: asyncio.Future[InferResponse] = self._loop.create_future()
        self._queue.append(_Pending(request, batch_size, future))
        self._inflight += 1
        self._idle.clear()
        self._wakeup.set()
        try:
            return await future
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def stream(self, request: InferRequest, batch_size: int) -> AsyncIterator[StreamItem]:
        """Queue a request for a decoupled model; yield its responses up to the final one.

        Closing the iterator early (the client went away) cancels the request: a queued
        one never executes, a running one sees ``cancelled`` on its stream.
        """
        if self._closed:
            raise Unavailable(f"model '{self._config.name}' is unloading")
        if self._max_queue and len(self._queue) >= self._max_queue:
            raise Unavailable("Exceeds maximum queue size")
        stream = ResponseStream(self._loop)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.append(_Pending(request, batch_size, future, stream=stream))
        self._streams.add(stream)
        self._inflight += 1
        self._idle.clear()
        self._wakeup.set()
        try:
            while True:
                item = await stream.get()
                yield item
                if item[1]:
                    return
        finally:
            if not future.done():
                future.cancel()  # still queued: _take_batch skips it
            if not stream.closed:
                stream.cancel()
            self._streams.discard(stream)
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    def _run_inline_now(self, slot: _Slot, request: InferRequest, batch_size: int) -> InferResponse:
        self._stats.queue.add(0)
        timing = ExecTiming()
        slot.busy = True
        try:
            try:
                results, elapsed = _timed_execute(slot.instance, [request], timing)
            except InferenceError as exc:
                results, elapsed = [exc], 0
            except Exception as exc:
                log.exception("model '%s' execution failed", self._config.name)
                results, elapsed = [InternalError(f"{type(exc).__name__}: {exc}")], 0
        finally:
            slot.busy = False
        results = self._finish(slot, 1, batch_size, timing, results, elapsed)
        result = results[0]
        if isinstance(result, BaseException):
            raise result
        return result

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, let queued ones finish, then finalize the instances."""
        self._closed = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("model '%s' still has requests in flight at unload", self._config.name)
            # decoupled requests whose model never sent the final flag end here
            for stream in list(self._streams):
                stream.cancel()
                stream.close_with(Unavailable(f"model '{self._config.name}' unloaded"))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._queue:
            item = self._queue.popleft()
            error = Unavailable(f"model '{self._config.name}' unloaded")
            if item.stream is not None:
                item.stream.close_with(error)
                item.future.cancel()
            elif not item.future.done():
                item.future.set_exception(error)
        for slot in self._slots:
            try:
                await slot.thread.submit(slot.instance.finalize)
            except Exception:  # a model's finalize must not stop the unload
                log.exception("finalize of model '%s' failed", self._config.name)
            slot.thread.stop()

    async def _worker(self, slot: _Slot) -> None:
        while True:
            while not self._queue or slot.busy:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = await self._take_batch()
            if not batch:
                continue
            start_ns = time.monotonic_ns()
            for item in batch:
                self._stats.queue.add(start_ns - item.enqueued_ns)
            timing = ExecTiming()
            requests = [item.request for item in batch]
            if slot.instance.decoupled:
                await self._execute_decoupled(slot, batch, requests, timing)
                continue
            slot.busy = True
            try:
                if slot.inline:
                    results, elapsed = _timed_execute(slot.instance, requests, timing)
                else:
                    results, elapsed = await slot.thread.submit(
                        _timed_execute, slot.instance, requests, timing
                    )
            except InferenceError as exc:
                results, elapsed = [exc] * len(batch), 0
            except Exception as exc:
                log.exception("model '%s' execution failed", self._config.name)
                results = [InternalError(f"{type(exc).__name__}: {exc}")] * len(batch)
                elapsed = 0
            finally:
                slot.busy = False
            results = self._finish(
                slot, len(batch), sum(item.batch_size for item in batch), timing, results, elapsed
            )
            for item, result in zip(batch, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
            if self._queue:
                self._wakeup.set()

    async def _execute_decoupled(
        self, slot: _Slot, batch: list[_Pending], requests: list[InferRequest], timing: ExecTiming
    ) -> None:
        """Run one batch of a decoupled model; its responses go through the streams."""
        streams: list[ResponseStream] = []
        for item in batch:
            if item.stream is None:  # a unary request reached a decoupled model
                item.stream = ResponseStream(self._loop)
                if not item.future.done():
                    item.future.set_exception(
                        InternalError(
                            f"model '{self._config.name}' is decoupled; its responses can "
                            f"only be streamed"
                        )
                    )
            streams.append(item.stream)
        slot.busy = True
        elapsed = 0
        try:
            elapsed = await slot.thread.submit(
                _timed_execute_decoupled, slot.instance, requests, streams, timing
            )
        except InferenceError as exc:
            for stream in streams:
                stream.close_with(exc)
        except Exception as exc:
            log.exception("model '%s' execution failed", self._config.name)
            error = InternalError(f"{type(exc).__name__}: {exc}")
            for stream in streams:
                stream.close_with(error)
        finally:
            slot.busy = False
        self._record(slot, len(batch), sum(item.batch_size for item in batch), timing, elapsed)
        for item in batch:
            if not item.future.done():
                item.future.set_result(None)
        if self._queue:
            self._wakeup.set()

    def _record(
        self, slot: _Slot, requests: int, batch_size: int, timing: ExecTiming, elapsed: int
    ) -> None:
        """Record an execution's statistics."""
        if elapsed:
            slot.observe(elapsed)
        if not (timing.compute_input_ns or timing.compute_infer_ns or timing.compute_output_ns):
            timing.compute_infer_ns = elapsed
        self._stats.record_execution(
            batch_size,
            requests,
            timing.compute_input_ns,
            timing.compute_infer_ns,
            timing.compute_output_ns,
        )

    def _finish(
        self,
        slot: _Slot,
        requests: int,
        batch_size: int,
        timing: ExecTiming,
        results: ExecResult,
        elapsed: int,
    ) -> ExecResult:
        """Record an execution's statistics; check the backend answered every request."""
        if len(results) != requests:
            results = [
                InternalError(
                    f"model '{self._config.name}' returned {len(results)} responses "
                    f"for {requests} requests"
                )
            ] * requests
        self._record(slot, requests, batch_size, timing, elapsed)
        return results

    async def _take_batch(self) -> list[_Pending]:
        first = self._queue.popleft()
        if first.future.done():
            return []
        batch = [first]
        if not self._max_batch:
            return batch
        size = first.batch_size
        deadline = time.monotonic() + self._delay_s
        while size < self._max_batch:
            while self._queue and size < self._max_batch:
                nxt = self._queue[0]
                if nxt.future.done():
                    self._queue.popleft()
                    continue
                if size + nxt.batch_size > self._max_batch or not _compatible(first, nxt):
                    return batch
                self._queue.popleft()
                batch.append(nxt)
                size += nxt.batch_size
            remaining = deadline - time.monotonic()
            if size >= self._max_batch or remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return batch


def _compatible(a: _Pending, b: _Pending) -> bool:
    """Whether two requests can share a batch: same inputs with the same non-batch shapes."""
    if len(a.request.inputs) != len(b.request.inputs):
        return False
    for ta in a.request.inputs:
        tb = b.request.input(ta.name)
        if tb is None or tb.shape[1:] != ta.shape[1:] or tb.datatype != ta.datatype:
            return False
    return True
