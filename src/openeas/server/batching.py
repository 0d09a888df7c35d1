"""Triton's ``dynamic_batching`` rules, kept apart from the scheduler's event-loop code.

* :class:`QueuePolicy`: one priority level's ``ModelQueuePolicy`` (timeout action,
  default timeout, whether a request's ``timeout`` parameter may override it, queue size).
* :class:`QueueConfig`: the levels of a model (``priority_levels``,
  ``default_priority_level``, ``default_queue_policy``, ``priority_queue_policy``) and how
  a request's ``priority`` / ``timeout`` parameters map onto them.
* :func:`select_batch`: how many of the queued requests (in service order) form the next
  batch, and whether that batch is ready or may still wait for more requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from openeas.protocol.errors import InvalidArgument, Unavailable
from openeas.protocol.types import InferRequest

if TYPE_CHECKING:
    from openeas.protocol.types import InferResponse
    from openeas.server.backends.base import ExecResult, ExecTiming, ModelInstance
    from openeas.server.repository.config import ModelConfig

_T = TypeVar("_T")

#: Triton's messages for requests the queue refuses.
QUEUE_FULL_MESSAGE = "Exceeds maximum queue size"
TIMEOUT_MESSAGE = "Request timeout expired"


class QueueRejected(Unavailable):
    """The queue refused a request: it was full, or the request's timeout expired in it.

    Statistics count these as failures with reason ``REJECTED`` (not ``BACKEND``).
    """


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """One priority level's queue policy (Triton's ``ModelQueuePolicy``)."""

    #: ``timeout_action: REJECT`` (else DELAY: a timed-out request yields to others).
    reject: bool = True
    default_timeout_ns: int = 0
    allow_override: bool = False
    #: 0: unbounded.
    max_size: int = 0

    @classmethod
    def from_proto(cls, policy: Any) -> QueuePolicy:
        return cls(
            reject=policy.timeout_action == 0,  # ModelQueuePolicy.REJECT
            default_timeout_ns=policy.default_timeout_microseconds * 1000,
            allow_override=policy.allow_timeout_override,
            max_size=policy.max_queue_size,
        )

    @property
    def has_timeouts(self) -> bool:
        return bool(self.default_timeout_ns or self.allow_override)

    def timeout_ns(self, request: InferRequest) -> int:
        """How long ``request`` may wait in this queue (0: no limit).

        A request's ``timeout`` parameter (microseconds) counts only when the policy
        allows overrides, and then only to shorten the default timeout, as in Triton.
        """
        timeout = self.default_timeout_ns
        if self.allow_override and "timeout" in request.parameters:
            value = request.parameters["timeout"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument(
                    f"request parameter 'timeout' must be a non-negative integer "
                    f"(microseconds), got {value!r}"
                )
            override = value * 1000
            if override and (not timeout or override < timeout):
                timeout = override
        return timeout


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """The priority levels of one model and the queue policy of each."""

    #: Queue policies by level index (index 0 is priority 1, the highest).
    policies: tuple[QueuePolicy, ...] = (QueuePolicy(),)
    #: ``priority_levels`` (0: priorities are not used).
    priority_levels: int = 0
    #: Level index of requests without a priority.
    default_index: int = 0

    @classmethod
    def from_config(cls, config: ModelConfig) -> QueueConfig:
        if not config.HasField("dynamic_batching"):
            return cls()
        batching = config.dynamic_batching
        default = QueuePolicy.from_proto(batching.default_queue_policy)
        levels = batching.priority_levels
        if not levels:
            return cls(policies=(default,))
        policies = tuple(
            QueuePolicy.from_proto(batching.priority_queue_policy[level])
            if level in batching.priority_queue_policy
            else default
            for level in range(1, levels + 1)
        )
        default_level = batching.default_priority_level or levels
        default_level = min(max(default_level, 1), levels)
        return cls(policies=policies, priority_levels=levels, default_index=default_level - 1)

    @property
    def trivial(self) -> bool:
        """One level, no timeouts: requests are served in arrival order, never expire."""
        return len(self.policies) == 1 and not self.policies[0].has_timeouts

    def level_of(self, request: InferRequest, model: str) -> int:
        """The level index for ``request`` (raises InvalidArgument for a bad priority)."""
        if not self.priority_levels:
            return 0
        value = request.parameters.get("priority", 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(
                f"request parameter 'priority' must be a non-negative integer, got {value!r}"
            )
        if value == 0:
            return self.default_index
        if value > self.priority_levels:
            raise InvalidArgument(
                f"invalid priority {value} for model '{model}': the model has "
                f"{self.priority_levels} priority levels, expected a value in "
                f"[0, {self.priority_levels}]"
            )
        return value - 1


class _Queued(Protocol):
    request: InferRequest
    batch_size: int


def compatible(a: InferRequest, b: InferRequest) -> bool:
    """Whether two requests can share a batch: same inputs with the same non-batch shapes."""
    if len(a.inputs) != len(b.inputs):
        return False
    for ta in a.inputs:
        tb = b.input(ta.name)
        if tb is None or tb.shape[1:] != ta.shape[1:] or tb.datatype != ta.datatype:
            return False
    return True


def select_batch(
    queued: Sequence[_Queued], max_batch: int, preferred: Sequence[int] = ()
) -> tuple[int, bool]:
    """How many of ``queued`` (in service order, not empty) form the next batch.

    Returns ``(count, ready)``.  Requests join in order while their total batch size stays
    within ``max_batch`` and their shapes match the first one's.  When the running total
    hits one of the ``preferred`` sizes the batch is cut at the largest such size and is
    ready at once.  Otherwise the batch is ready only when it cannot grow (it is full or
    the next request does not fit); if not, the caller may wait for more requests up to
    the queue delay and then send ``count`` requests anyway.
    """
    if max_batch <= 0:
        return 1, True
    first = queued[0].request
    size = 0
    count = 0
    best = 0
    full = False
    for item in queued:
        if count and (size + item.batch_size > max_batch or not compatible(first, item.request)):
            full = True
            break
        size += item.batch_size
        count += 1
        if size in preferred:
            best = count
        if size >= max_batch:
            full = True
            break
    if best:
        return best, True
    return count, full


# --------------------------------------------------------------- shared by the schedulers


class InFlight:
    """How many requests a scheduler holds (queued or executing), and when none."""

    __slots__ = ("count", "_idle")

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if not self.count:
            self._idle.set()

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no request is held; False when ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


class InOrder(Generic[_T]):
    """Releases results in the order their requests arrived (``preserve_ordering``).

    Each request takes a :meth:`ticket` on arrival; :meth:`release` holds a result back
    until every earlier ticket has been released, and returns what may go now.
    """

    __slots__ = ("_issued", "_released", "_held")

    def __init__(self) -> None:
        self._issued = 0
        self._released = 0
        self._held: dict[int, _T] = {}

    def ticket(self) -> int:
        ticket = self._issued
        self._issued += 1
        return ticket

    def release(self, ticket: int, value: _T) -> list[_T]:
        """The values that may be handed out now, in arrival order."""
        held = self._held
        held[ticket] = value
        ready: list[_T] = []
        while self._released in held:
            ready.append(held.pop(self._released))
            self._released += 1
        return ready

    def drain(self) -> list[_T]:
        """Everything still held, in arrival order (nothing earlier will finish)."""
        values = [self._held[ticket] for ticket in sorted(self._held)]
        self._held.clear()
        return values


def resolve(future: asyncio.Future[Any], result: InferResponse | BaseException | None) -> None:
    """Settle a request's future (None: nobody waits for it any more)."""
    if result is None or future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def timed_execute(
    instance: ModelInstance, requests: list[InferRequest], timing: ExecTiming
) -> tuple[ExecResult, int]:
    """``instance.execute(requests)`` and how long it took, in nanoseconds."""
    start = time.perf_counter_ns()
    results = instance.execute(requests, timing)
    return results, time.perf_counter_ns() - start
