"""Request scheduling for one model version: a queue in front of the model's instances.

Each instance has a worker coroutine on the event loop that takes work from the shared
queue and runs it on the instance's own thread.  With ``dynamic_batching`` (and
``max_batch_size > 0``) a worker takes every queued request that fits into one batch
(same non-batch shapes, total batch size <= ``max_batch_size``), waiting up to
``max_queue_delay_microseconds`` (counted from the oldest request's arrival) for more
when the batch is not full; otherwise each request executes alone.  When the queued
requests reach one of the ``preferred_batch_size`` values, the batch is cut at the
largest one reached and sent at once.  One worker at a time forms a batch (as Triton's
single batcher thread), so with several instances each batch goes to an idle instance.

Dynamic batching also brings Triton's queue policies (:mod:`openeas.server.batching`):
one queue per priority level (request parameter ``priority``; lower number first),
``max_queue_size`` per level and a timeout per request (``default_timeout_microseconds``,
or the request's ``timeout`` parameter where ``allow_timeout_override``).  A request
whose timeout expires while queued fails at once with ``REJECT``, or with ``DELAY``
stays queued behind the requests of its level that have not timed out.  Requests the
queue refuses raise :class:`QueueRejected`.  With ``preserve_ordering`` each request's
response is released only after those of every request that arrived before it (several
instances may finish out of order); it does not apply to decoupled models, whose
responses flow through their streams as the model sends them.

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
from openeas.server.batching import (
    QUEUE_FULL_MESSAGE,
    TIMEOUT_MESSAGE,
    InFlight,
    InOrder,
    QueueConfig,
    QueuePolicy,
    QueueRejected,
    resolve,
    select_batch,
    timed_execute,
)
from openeas.server.repository.config import ModelConfig
from openeas.server.stats import ModelStats
from openeas.server.workers import WorkerThread

__all__ = ["QueueRejected", "Scheduler"]

log = logging.getLogger(__name__)

#: States of a queued request.
_QUEUED, _TAKEN, _GONE = 0, 1, 2


@dataclass(slots=True)
class _Pending:
    request: InferRequest
    batch_size: int
    future: asyncio.Future[InferResponse]
    enqueued_ns: int = field(default_factory=time.monotonic_ns)
    #: Where a decoupled model's responses go (None for other models).
    stream: ResponseStream | None = None
    #: Index of its priority level's queue.
    level: int = 0
    #: time.monotonic_ns() when its queue timeout expires (0: never).
    deadline_ns: int = 0
    #: _QUEUED until a batch takes it (_TAKEN) or it leaves the queue otherwise (_GONE).
    state: int = _QUEUED
    #: Rejects it when its timeout expires (REJECT policy only).
    timer: asyncio.TimerHandle | None = None
    #: Arrival number when responses are released in arrival order (else -1).
    seq: int = -1


class _Level:
    """The queue of one priority level."""

    __slots__ = ("items", "count", "policy")

    def __init__(self, policy: QueuePolicy) -> None:
        self.items: collections.deque[_Pending] = collections.deque()
        #: Requests of ``items`` still _QUEUED.
        self.count = 0
        self.policy = policy


#: Executions whose running average stays under this run inline on the event loop.
INLINE_BUDGET_NS = 250_000
#: One execution counts as at most this long in that average.  Wall time includes the
#: moments the OS ran other threads; on a busy machine a 10 us model sometimes "takes"
#: milliseconds, and one such sample must not send a cheap model to the worker thread
#: (where every request pays the GIL hand-off, the source of latency spikes).  A model
#: that really takes longer still leaves the loop after a few executions.
INLINE_SAMPLE_CAP_NS = 4 * INLINE_BUDGET_NS
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
        duration_ns = min(duration_ns, INLINE_SAMPLE_CAP_NS)
        if self.samples == 0:
            self.ewma_ns = float(duration_ns)
        else:
            self.ewma_ns += _EWMA_ALPHA * (duration_ns - self.ewma_ns)
        self.samples += 1


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
        self._queue_config = queues = QueueConfig.from_config(config)
        #: One queue per priority level, highest priority first.
        self._levels = [_Level(policy) for policy in queues.policies]
        #: Requests queued (still _QUEUED) over all levels.
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._closed = False
        #: The instances are decoupled (the backend honours the decoupled transaction
        #: policy): requests go through stream(), never infer().
        self.decoupled = any(instance.decoupled for _, instance in instances)
        #: Streams of decoupled requests that have not seen their final flag yet.
        self._streams: set[ResponseStream] = set()
        self._inflight = InFlight()

        batching = config.max_batch_size > 0 and config.HasField("dynamic_batching")
        self._max_batch = config.max_batch_size if batching else 0
        self._delay_s = (
            config.dynamic_batching.max_queue_delay_microseconds / 1e6 if batching else 0.0
        )
        self._delay_ns = int(self._delay_s * 1e9)
        self._preferred = (
            frozenset(size for size in config.dynamic_batching.preferred_batch_size if size > 0)
            if batching
            else frozenset()
        )
        #: ``preserve_ordering``: responses are released in arrival order.
        self._ordering = (
            config.dynamic_batching.preserve_ordering
            and config.HasField("dynamic_batching")
            and not self.decoupled
        )
        #: Finished requests waiting for an earlier one (``preserve_ordering``).
        self._in_order: InOrder[tuple[_Pending, InferResponse | BaseException | None]] = InOrder()
        #: Requests must go through the queue (no inline execution on arrival): they
        #: may have to wait for a batch, a priority, a timeout or an earlier request.
        self._queue_only = bool(self._delay_s) or not queues.trivial or self._ordering
        #: Only the worker holding this lock forms a batch.
        self._forming = asyncio.Lock()

        self._slots = [
            _Slot(name, instance, WorkerThread(name, loop)) for name, instance in instances
        ]
        self._tasks = [loop.create_task(self._worker(slot)) for slot in self._slots]

    @property
    def pending(self) -> int:
        """Requests waiting in the queue or executing."""
        return self._inflight.count

    def infer_now(self, request: InferRequest, batch_size: int) -> InferResponse | None:
        """Execute ``request`` at once when an inline instance is idle and nothing is
        queued; None when it has to go through :meth:`infer` (raises InferenceError).

        The same as :meth:`infer` without the coroutine, for callers on the hot path.
        """
        if self._queued or self._queue_only or self._closed:
            return None
        for slot in self._slots:
            if not slot.busy and slot.inline:
                return self._run_inline_now(slot, request, batch_size)
        return None

    async def infer(self, request: InferRequest, batch_size: int) -> InferResponse:
        """Queue ``request`` and wait for its response (raises InferenceError)."""
        if self._closed:
            raise Unavailable(f"model '{self._config.name}' is unloading")
        if not self._queued and not self._queue_only:
            for slot in self._slots:
                if not slot.busy and slot.inline:
                    return self._run_inline_now(slot, request, batch_size)
        future: asyncio.Future[InferResponse] = self._loop.create_future()
        item = self._enqueue(_Pending(request, batch_size, future))
        try:
            return await future
        finally:
            if item.state == _QUEUED:  # the caller went away while it was queued
                self._leave(item)
                if item.seq >= 0:
                    self._deliver(item, None)
            self._inflight.leave()

    async def stream(self, request: InferRequest, batch_size: int) -> AsyncIterator[StreamItem]:
        """Queue a request for a decoupled model; yield its responses up to the final one.

        Closing the iterator early (the client went away) cancels the request: a queued
        one never executes, a running one sees ``cancelled`` on its stream.
        """
        if self._closed:
            raise Unavailable(f"model '{self._config.name}' is unloading")
        stream = ResponseStream(self._loop)
        future: asyncio.Future[Any] = self._loop.create_future()
        pending = self._enqueue(_Pending(request, batch_size, future, stream=stream))
        self._streams.add(stream)
        try:
            while True:
                item = await stream.get()
                if item[1] and isinstance(item[0], QueueRejected) and pending.state == _GONE:
                    raise item[0]  # its timeout expired in the queue: it never ran
                yield item
                if item[1]:
                    return
        finally:
            if pending.state == _QUEUED:  # never executes
                self._leave(pending)
            if not future.done():
                future.cancel()
            if not stream.closed:
                stream.cancel()
            self._streams.discard(stream)
            self._inflight.leave()

    def _enqueue(self, item: _Pending) -> _Pending:
        """Put ``item`` into its priority level's queue (raises when it is refused)."""
        queues = self._queue_config
        if queues.trivial:
            level = self._levels[0]
        else:
            item.level = queues.level_of(item.request, self._config.name)
            level = self._levels[item.level]
        policy = level.policy
        if policy.max_size and level.count >= policy.max_size:
            raise QueueRejected(QUEUE_FULL_MESSAGE)
        if policy.has_timeouts:
            timeout_ns = policy.timeout_ns(item.request)
            if timeout_ns:
                item.deadline_ns = item.enqueued_ns + timeout_ns
                if policy.reject:
                    item.timer = self._loop.call_later(timeout_ns / 1e9, self._expire, item)
        if self._ordering:
            item.seq = self._in_order.ticket()
        level.items.append(item)
        level.count += 1
        self._queued += 1
        self._inflight.enter()
        self._wakeup.set()
        return item

    def _leave(self, item: _Pending) -> None:
        """Take a _QUEUED ``item`` out of the counts (its deque drops it lazily)."""
        item.state = _GONE
        self._levels[item.level].count -= 1
        self._queued -= 1
        if item.timer is not None:
            item.timer.cancel()

    def _expire(self, item: _Pending) -> None:
        """Reject a request whose queue timeout expired (REJECT policy)."""
        if item.state != _QUEUED:
            return
        self._leave(item)
        error = QueueRejected(TIMEOUT_MESSAGE)
        if item.stream is not None:
            item.stream.close_with(error)
        else:
            self._deliver(item, error)

    def _deliver(self, item: _Pending, result: InferResponse | BaseException | None) -> None:
        """Resolve ``item``'s future (None: nobody waits for it any more).

        With ``preserve_ordering`` a result waits until every request that arrived
        before it has been resolved.
        """
        if item.seq >= 0:
            for ready, value in self._in_order.release(item.seq, (item, result)):
                resolve(ready.future, value)
            return
        resolve(item.future, result)

    def _ordered(self, now_ns: int, limit: int) -> list[_Pending]:
        """Queued requests in service order, until their batch sizes reach ``limit``.

        Higher priority levels first; within a level, arrival order, except that
        requests whose timeout expired (DELAY policy) come after the others of their
        level.  Expired requests of REJECT levels are rejected here.
        """
        ordered: list[_Pending] = []
        total = 0
        for level in self._levels:
            if not level.count:
                continue
            items = level.items
            while items and items[0].state != _QUEUED:
                items.popleft()
            late: list[_Pending] = []
            for item in items:
                if item.state != _QUEUED:
                    continue
                if item.deadline_ns and now_ns >= item.deadline_ns:
                    if level.policy.reject:
                        self._expire(item)
                    else:
                        late.append(item)
                    continue
                ordered.append(item)
                total += item.batch_size
                if total >= limit:
                    return ordered
            for item in late:
                ordered.append(item)
                total += item.batch_size
                if total >= limit:
                    return ordered
        return ordered

    def _run_inline_now(self, slot: _Slot, request: InferRequest, batch_size: int) -> InferResponse:
        self._stats.queue.count += 1  # it waited 0 ns
        timing = ExecTiming()
        slot.busy = True
        try:
            try:
                begin = time.perf_counter_ns()
                results = slot.instance.execute([request], timing)
                elapsed = time.perf_counter_ns() - begin
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
        if not await self._inflight.wait_idle(timeout):
            log.warning("model '%s' still has requests in flight at unload", self._config.name)
            # decoupled requests whose model never sent the final flag end here
            for stream in list(self._streams):
                stream.cancel()
                stream.close_with(Unavailable(f"model '{self._config.name}' unloaded"))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for level in self._levels:
            while level.items:
                item = level.items.popleft()
                if item.state != _QUEUED:
                    continue
                self._leave(item)
                error = Unavailable(f"model '{self._config.name}' unloaded")
                if item.stream is not None:
                    item.stream.close_with(error)
                    item.future.cancel()
                else:
                    self._deliver(item, error)
        # preserve_ordering: nothing earlier will finish any more
        for item, result in self._in_order.drain():
            resolve(item.future, result)
        for slot in self._slots:
            try:
                await slot.thread.submit(slot.instance.finalize)
            except Exception:  # a model's finalize must not stop the unload
                log.exception("finalize of model '%s' failed", self._config.name)
            slot.thread.stop()

    async def _worker(self, slot: _Slot) -> None:
        while True:
            async with self._forming:
                batch = await self._take_batch()
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
                    results, elapsed = timed_execute(slot.instance, requests, timing)
                else:
                    results, elapsed = await slot.thread.submit(
                        timed_execute, slot.instance, requests, timing
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
                self._deliver(item, result)
            if self._queued:
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
        if self._queued:
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
        """Wait for the next batch (see :func:`select_batch`) and take it off the queue."""
        limit = max(self._max_batch, 1)
        while True:
            if not self._queued:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            now_ns = time.monotonic_ns()
            ordered = self._ordered(now_ns, limit)
            if not ordered:  # all of them expired
                continue
            count, ready = select_batch(ordered, self._max_batch, self._preferred)
            batch = ordered[:count]
            if not ready and self._delay_ns:
                oldest = min(item.enqueued_ns for item in batch)
                remaining = oldest + self._delay_ns - now_ns
                if remaining > 0:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining / 1e9)
                    except TimeoutError:
                        pass
                    continue
            for item in batch:
                item.state = _TAKEN
                self._levels[item.level].count -= 1
                if item.timer is not None:
                    item.timer.cancel()
            self._queued -= count
            return batch
