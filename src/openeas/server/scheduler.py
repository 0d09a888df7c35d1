"""Request scheduling for one model version: a queue in front of the model's instances.

Each instance has a worker coroutine on the event loop that takes work from the shared
queue and runs it on the instance's own thread.  With ``dynamic_batching`` (and
``max_batch_size > 0``) a worker takes every queued request that fits into one batch
(same non-batch shapes, total batch size <= ``max_batch_size``), waiting up to
``max_queue_delay_microseconds`` for more when the batch is not full; otherwise each
request executes alone.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field

from openeas.protocol.errors import InferenceError, InternalError, Unavailable
from openeas.protocol.types import InferRequest, InferResponse
from openeas.server.backends.base import ExecTiming, ModelInstance
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


class Scheduler:
    """Queues requests for one model version and executes them on its instances."""

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

        self._instances = instances
        self._threads = [WorkerThread(f"{name}", loop) for name, _ in instances]
        self._tasks = [
            loop.create_task(self._worker(instance, thread))
            for (_, instance), thread in zip(instances, self._threads, strict=True)
        ]

    @property
    def pending(self) -> int:
        """Requests waiting in the queue or executing."""
        return self._inflight

    async def infer(self, request: InferRequest, batch_size: int) -> InferResponse:
        """Queue ``request`` and wait for its response (raises InferenceError)."""
        if self._closed:
            raise Unavailable(f"model '{self._config.name}' is unloading")
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

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, let queued ones finish, then finalize the instances."""
        self._closed = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("model '%s' still has requests in flight at unload", self._config.name)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(Unavailable(f"model '{self._config.name}' unloaded"))
        for (_, instance), thread in zip(self._instances, self._threads, strict=True):
            try:
                await thread.submit(instance.finalize)
            except Exception:  # a model's finalize must not stop the unload
                log.exception("finalize of model '%s' failed", self._config.name)
            thread.stop()

    async def _worker(self, instance: ModelInstance, thread: WorkerThread) -> None:
        while True:
            while not self._queue:
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
            try:
                results = await thread.submit(instance.execute, requests, timing)
            except InferenceError as exc:
                results = [exc] * len(batch)
            except Exception as exc:
                log.exception("model '%s' execution failed", self._config.name)
                results = [InternalError(f"{type(exc).__name__}: {exc}")] * len(batch)
            elapsed = time.monotonic_ns() - start_ns
            if not (timing.compute_input_ns or timing.compute_infer_ns or timing.compute_output_ns):
                timing.compute_infer_ns = elapsed
            if len(results) != len(batch):
                results = [
                    InternalError(
                        f"model '{self._config.name}' returned {len(results)} responses "
                        f"for {len(batch)} requests"
                    )
                ] * len(batch)
            self._stats.record_execution(
                sum(item.batch_size for item in batch),
                len(batch),
                timing.compute_input_ns,
                timing.compute_infer_ns,
                timing.compute_output_ns,
            )
            for item, result in zip(batch, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

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
