"""Triton's sequence batcher: stateful models whose requests belong to sequences.

Every request names its sequence (``sequence_id``) and flags its first and last request
(``sequence_start``, ``sequence_end``).  A starting sequence is bound to one *slot* of
one model instance until it ends or stays idle longer than
``max_sequence_idle_microseconds``; when every slot is taken it waits in a backlog for
the next free slot.  Free slots are handed out lowest slot number first, instance by
instance, so several instances each get sequences.  Each instance has a worker that
forms batches from its slots, at most one request per sequence per batch, so a
sequence's requests execute one at a time and in order:

* ``direct``: the batch holds the slots 0..highest occupied slot, each at its own batch
  position; a slot without a ready request gets a *null request* (zero inputs,
  ``READY`` false).  With ``minimum_slot_utilization`` > 0 and a
  ``max_queue_delay_microseconds``, a batch waits (at most the delay, from its oldest
  request) until that fraction of the slots is ready.
* ``oldest``: the batch holds the oldest ready requests of the candidate sequences
  (``max_candidate_sequences`` slots per instance), up to ``max_batch_size``, cut at the
  largest ``preferred_batch_size`` reached, waiting up to the queue delay for more;
  ``preserve_ordering`` releases responses in arrival order.

The backend sees each request with its control inputs and implicit state inputs added
(:mod:`openeas.server.sequence.tensors`); the state outputs are kept for the sequence's
next request and removed from the response.  Statistics count each client request once
(null requests are not inferences) and each batch as one execution.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from openeas.protocol.errors import InferenceError, InternalError, InvalidArgument, Unavailable
from openeas.protocol.types import InferRequest, InferResponse, Tensor
from openeas.server.backends.base import ExecTiming, ModelInstance
from openeas.server.batching import InFlight, InOrder, resolve, select_batch, timed_execute
from openeas.server.repository.config import ModelConfig
from openeas.server.sequence.config import SequenceSettings, sequence_settings
from openeas.server.sequence.tensors import (
    SequenceId,
    backend_request,
    check_corrid,
    control_tensors,
    flag,
    null_request,
    sequence_id_of,
    split_state,
    state_tensor,
)
from openeas.server.stats import ModelStats
from openeas.server.workers import WorkerThread

__all__ = ["SequenceScheduler"]

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class _Item:
    """One client request waiting in its sequence's queue."""

    request: InferRequest
    sequence: _Sequence
    start: bool
    end: bool
    future: asyncio.Future[InferResponse]
    enqueued_ns: int = field(default_factory=time.monotonic_ns)
    #: Arrival number with ``preserve_ordering`` (else -1).
    order: int = -1
    #: The caller went away before it was taken.
    gone: bool = False
    #: Its future was resolved (or it was given up with ``preserve_ordering``).
    delivered: bool = False
    #: What :func:`select_batch` reads.
    batch_size: int = 1


@dataclass(slots=True, eq=False)
class _Sequence:
    """A sequence from its START until its END was taken, or it was released idle."""

    id: SequenceId
    state: dict[str, np.ndarray]
    queue: collections.deque[_Item] = field(default_factory=collections.deque)
    #: (instance index, slot index) while it holds a slot; None in the backlog.
    slot: tuple[int, int] | None = None
    last_ns: int = field(default_factory=time.monotonic_ns)
    #: Requests of it executing right now.
    executing: int = 0
    released: bool = False

    def head(self) -> _Item | None:
        """The oldest request still wanted (drops those whose caller went away)."""
        queue = self.queue
        while queue and queue[0].gone:
            queue.popleft()
        return queue[0] if queue else None


class _Instance:
    """One model instance: its slots, worker thread and wake-up event."""

    __slots__ = ("index", "name", "model", "thread", "slots", "wakeup")

    def __init__(
        self, index: int, name: str, model: ModelInstance, slots: int, thread: WorkerThread
    ) -> None:
        self.index = index
        self.name = name
        self.model = model
        self.thread = thread
        self.slots: list[_Sequence | None] = [None] * slots
        self.wakeup = asyncio.Event()



class SequenceScheduler:
    """Schedules the requests of a ``sequence_batching`` model version.

    Same surface as :class:`openeas.server.scheduler.Scheduler` (``infer``, ``pending``,
    ``decoupled``, ``close``).
    """

    decoupled = False

    def __init__(
        self,
        config: ModelConfig,
        version: str,
        instances: list[tuple[str, ModelInstance]],
        stats: ModelStats,
        loop: asyncio.AbstractEventLoop,
        settings: SequenceSettings | None = None,
    ) -> None:
        self._config = config
        self._name = config.name
        self._stats = stats
        self._loop = loop
        self.settings = settings or sequence_settings(config)
        self._batching = config.max_batch_size > 0
        self._outputs = [output.name for output in config.output]
        self._instances = [
            _Instance(
                index, name, model, self.settings.slots_per_instance, WorkerThread(name, loop)
            )
            for index, (name, model) in enumerate(instances)
        ]
        #: Free slots as (slot index, instance index): lowest slot first, spread over
        #: the instances.
        self._free = [
            (slot, inst.index) for inst in self._instances for slot in range(len(inst.slots))
        ]
        heapq.heapify(self._free)
        #: Sequences that can still get requests (START seen, END not yet), by id.
        self._sequences: dict[SequenceId, _Sequence] = {}
        #: Sequences holding a slot or waiting for one.
        self._live: set[_Sequence] = set()
        self._backlog: collections.deque[_Sequence] = collections.deque()
        self._inflight = InFlight()
        #: close() was called: no new sequences; _stopped: no requests at all.
        self._closed = False
        self._stopped = False
        self._ordering = self.settings.strategy == "oldest" and self.settings.preserve_ordering
        self._in_order: InOrder[tuple[_Item, InferResponse | BaseException | None]] = InOrder()
        self._reaper_wakeup = asyncio.Event()
        self._tasks = [loop.create_task(self._worker(inst)) for inst in self._instances]
        self._tasks.append(loop.create_task(self._reaper()))

    @property
    def pending(self) -> int:
        """Requests waiting or executing."""
        return self._inflight.count

    def infer_now(self, request: InferRequest, batch_size: int) -> None:
        """Never: a sequence's request waits for its slot's batch."""
        return None

    @property
    def active_sequences(self) -> int:
        """Sequences holding a slot or waiting in the backlog."""
        return len(self._live)

    # -- arrival ------------------------------------------------------------------------

    async def infer(self, request: InferRequest, batch_size: int) -> InferResponse:
        """Queue ``request`` on its sequence and wait for its response."""
        if batch_size > 1:
            raise InvalidArgument(
                f"inference request to model '{self._name}' must specify batch-size 1 due "
                "to requirements of sequence batcher"
            )
        sequence_id = sequence_id_of(request, self._name)
        start = flag(request, "sequence_start")
        end = flag(request, "sequence_end")
        check_corrid(self.settings.corrid, sequence_id, self._name)
        if self._stopped or (self._closed and start):
            # while unloading, sequences under way may still finish (as in Triton)
            raise Unavailable(
                f"model '{self._name}' is unloading: its scheduler has stopped accepting "
                "new inference requests"
            )
        sequence = self._sequences.get(sequence_id)
        if sequence is None:
            if not start:
                raise InvalidArgument(
                    f"inference request for sequence {sequence_id} to model '{self._name}' "
                    "must specify the START flag on the first request of the sequence"
                )
            sequence = self._begin(sequence_id)
        elif start:
            log.warning(
                "sequence %s for model '%s' has a conflict. The previous sequence did not "
                "end before this sequence start. Previous sequence will be terminated early.",
                sequence_id,
                self._name,
            )
        item = _Item(request, sequence, start, end, self._loop.create_future())
        if self._ordering:
            item.order = self._in_order.ticket()
        sequence.queue.append(item)
        sequence.last_ns = item.enqueued_ns
        if end:
            del self._sequences[sequence_id]
        self._inflight.enter()
        if sequence.slot is not None:
            self._instances[sequence.slot[0]].wakeup.set()
        try:
            return await item.future
        finally:
            if not item.delivered:  # the caller went away before its answer
                item.gone = True
                if item.order >= 0:
                    self._deliver(item, None)
            self._inflight.leave()

    def _begin(self, sequence_id: SequenceId) -> _Sequence:
        sequence = _Sequence(sequence_id, self._initial_state())
        self._sequences[sequence_id] = sequence
        self._live.add(sequence)
        if self._free:
            self._assign(sequence, heapq.heappop(self._free))
        else:
            self._backlog.append(sequence)
        self._reaper_wakeup.set()
        return sequence

    def _initial_state(self) -> dict[str, np.ndarray]:
        return {state.input_name: state.initial for state in self.settings.states}

    def _assign(self, sequence: _Sequence, free: tuple[int, int]) -> None:
        slot, index = free
        instance = self._instances[index]
        instance.slots[slot] = sequence
        sequence.slot = (index, slot)
        instance.wakeup.set()

    def _release(self, sequence: _Sequence) -> None:
        """Free ``sequence``'s slot (or backlog place) and forget its state."""
        sequence.released = True
        self._live.discard(sequence)
        if self._sequences.get(sequence.id) is sequence:
            del self._sequences[sequence.id]
        if sequence.slot is None:
            return
        index, slot = sequence.slot
        sequence.slot = None
        self._instances[index].slots[slot] = None
        while self._backlog:
            waiting = self._backlog.popleft()
            if not waiting.released:
                self._assign(waiting, (slot, index))
                return
        heapq.heappush(self._free, (slot, index))

    # -- idle sequences -----------------------------------------------------------------

    async def _reaper(self) -> None:
        """Release sequences that got no request for ``max_sequence_idle_microseconds``."""
        idle_ns = self.settings.idle_ns
        while True:
            now = time.monotonic_ns()
            next_due = 0
            for sequence in list(self._live):
                if sequence.executing or sequence.head() is not None:
                    continue
                due = sequence.last_ns + idle_ns
                if due <= now:
                    log.info(
                        "sequence %s of model '%s' released after being idle",
                        sequence.id,
                        self._name,
                    )
                    self._release(sequence)
                elif not next_due or due < next_due:
                    next_due = due
            self._reaper_wakeup.clear()
            timeout = (next_due - now) / 1e9 if next_due else None
            try:
                await asyncio.wait_for(self._reaper_wakeup.wait(), timeout)
            except TimeoutError:
                pass

    # -- batches ------------------------------------------------------------------------

    async def _worker(self, instance: _Instance) -> None:
        while True:
            batch = await self._next_batch(instance)
            await self._run(instance, batch)

    def _ready(self, instance: _Instance) -> dict[int, _Item]:
        """The next request of each slot that has one, by slot."""
        ready: dict[int, _Item] = {}
        for slot, sequence in enumerate(instance.slots):
            if sequence is not None:
                item = sequence.head()
                if item is not None:
                    ready[slot] = item
        return ready

    async def _next_batch(self, instance: _Instance) -> list[tuple[int, _Item | None]]:
        """Wait until a batch is due on ``instance``; take its requests off the queues."""
        settings = self.settings
        while True:
            ready = self._ready(instance)
            if not ready:
                instance.wakeup.clear()
                await instance.wakeup.wait()
                continue
            if settings.strategy == "direct":
                chosen, due = self._direct(instance, ready)
            else:
                chosen, due = self._oldest(ready)
            if due:
                remaining = min(item.enqueued_ns for _, item in chosen if item is not None)
                remaining += settings.delay_ns - time.monotonic_ns()
                if remaining > 0:
                    instance.wakeup.clear()
                    try:
                        await asyncio.wait_for(instance.wakeup.wait(), remaining / 1e9)
                    except TimeoutError:
                        pass
                    continue
            for _, item in chosen:
                if item is not None:
                    self._take(item)
            return chosen

    def _direct(
        self, instance: _Instance, ready: dict[int, _Item]
    ) -> tuple[list[tuple[int, _Item | None]], bool]:
        """Slots 0..highest occupied; whether the batch may still wait for more."""
        settings = self.settings
        slots = len(instance.slots)
        highest = max(i for i, sequence in enumerate(instance.slots) if sequence is not None)
        chosen = [(slot, ready.get(slot)) for slot in range(highest + 1)]
        wait = (
            settings.delay_ns > 0
            and settings.min_slot_utilization > 0
            and len(ready) < slots
            and len(ready) / slots < settings.min_slot_utilization
        )
        return chosen, wait

    def _oldest(self, ready: dict[int, _Item]) -> tuple[list[tuple[int, _Item | None]], bool]:
        """The oldest ready requests; whether the batch may still wait for more."""
        settings = self.settings
        ordered = sorted(ready.items(), key=lambda entry: entry[1].enqueued_ns)
        count, full = select_batch(
            [item for _, item in ordered], settings.max_batch, tuple(settings.preferred)
        )
        chosen: list[tuple[int, _Item | None]] = list(ordered[:count])
        return chosen, not full and settings.delay_ns > 0

    def _take(self, item: _Item) -> None:
        sequence = item.sequence
        sequence.queue.popleft()
        sequence.executing += 1
        if item.end:
            self._release(sequence)

    async def _run(self, instance: _Instance, batch: list[tuple[int, _Item | None]]) -> None:
        """Execute one batch on ``instance`` and answer its requests."""
        start_ns = time.monotonic_ns()
        items = [item for _, item in batch if item is not None]
        try:
            requests = self._backend_requests(instance, batch)
        except InferenceError as exc:
            self._finish(items, [exc] * len(items))
            return
        for item in items:
            self._stats.queue.add(start_ns - item.enqueued_ns)
        timing = ExecTiming()
        elapsed = 0
        try:
            results, elapsed = await instance.thread.submit(
                timed_execute, instance.model, requests, timing
            )
        except InferenceError as exc:
            results = [exc] * len(requests)
        except Exception as exc:
            log.exception("model '%s' execution failed", self._name)
            results = [InternalError(f"{type(exc).__name__}: {exc}")] * len(requests)
        if len(results) != len(requests):
            results = [
                InternalError(
                    f"model '{self._name}' returned {len(results)} responses for "
                    f"{len(requests)} requests"
                )
            ] * len(requests)
        if not (timing.compute_input_ns or timing.compute_infer_ns or timing.compute_output_ns):
            timing.compute_infer_ns = elapsed
        self._stats.record_execution(
            len(items),
            len(items),
            timing.compute_input_ns,
            timing.compute_infer_ns,
            timing.compute_output_ns,
        )
        answers = [
            result for (_, item), result in zip(batch, results, strict=True) if item is not None
        ]
        self._finish(items, answers)

    def _backend_requests(
        self, instance: _Instance, batch: list[tuple[int, _Item | None]]
    ) -> list[InferRequest]:
        """The requests the backend executes: controls and state added, nulls filled in."""
        settings = self.settings
        batching = self._batching
        requests: list[InferRequest | None] = []
        for _, item in batch:
            if item is None:
                requests.append(None)
                continue
            sequence = item.sequence
            if item.start:
                sequence.state = self._initial_state()
            extra = control_tensors(
                settings,
                batching,
                start=item.start,
                end=item.end,
                ready=True,
                sequence_id=sequence.id,
            )
            extra.extend(self._state_inputs(sequence.state))
            requests.append(backend_request(item.request, extra, settings, self._outputs))
        template = next(request for request in requests if request is not None)
        for position, (slot, item) in enumerate(batch):
            if item is not None:
                continue
            occupant = instance.slots[slot]
            state = occupant.state if occupant is not None else self._initial_state()
            extra = control_tensors(
                settings, batching, start=False, end=False, ready=False, sequence_id=None
            )
            extra.extend(self._state_inputs(state))
            requests[position] = null_request(template, extra)
        return [request for request in requests if request is not None]

    def _state_inputs(self, state: dict[str, np.ndarray]) -> list[Tensor]:
        return [
            state_tensor(spec, state[spec.input_name], self._batching)
            for spec in self.settings.states
        ]

    def _finish(self, items: list[_Item], results: list[InferResponse | InferenceError]) -> None:
        """Keep each sequence's new state, strip it from the response, answer the caller."""
        now = time.monotonic_ns()
        for item, result in zip(items, results, strict=True):
            sequence = item.sequence
            sequence.executing -= 1
            sequence.last_ns = now
            answer: InferResponse | BaseException = result
            if isinstance(result, InferResponse):
                try:
                    sequence.state.update(
                        split_state(result, self.settings.states, self._batching, self._name)
                    )
                except InferenceError as exc:
                    answer = exc
            self._deliver(item, answer)
        self._reaper_wakeup.set()

    def _deliver(self, item: _Item, result: InferResponse | BaseException | None) -> None:
        """Resolve ``item``'s future; in arrival order with ``preserve_ordering``."""
        if item.delivered:
            return
        item.delivered = True
        if item.order < 0:
            resolve(item.future, result)
            return
        for ready, value in self._in_order.release(item.order, (item, result)):
            resolve(ready.future, value)

    # -- unload -------------------------------------------------------------------------

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new sequences, let queued requests finish, then finalize the instances.

        Sequences under way may go on sending requests until the timeout.
        """
        self._closed = True
        if not await self._inflight.wait_idle(timeout):
            log.warning("model '%s' still has requests in flight at unload", self._name)
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        error = Unavailable(f"model '{self._name}' unloaded")
        for sequence in list(self._live):
            for item in sequence.queue:
                if not item.gone:
                    self._deliver(item, error)
            sequence.queue.clear()
        for item, result in self._in_order.drain():
            resolve(item.future, result)
        for instance in self._instances:
            try:
                await instance.thread.submit(instance.model.finalize)
            except Exception:  # a model's finalize must not stop the unload
                log.exception("finalize of model '%s' failed", self._name)
            instance.thread.stop()
