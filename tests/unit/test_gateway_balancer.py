"""ServiceState: least outstanding choice, rotation of ties, limits, queue, sequences."""

from __future__ import annotations

import asyncio

import pytest

from openeas.gateway.balancer import RateLimiter, ServiceState
from openeas.gateway.deadline import Deadline, Expired
from openeas.gateway.errors import NoInstance, QueueFull, RateLimited, ServiceNotFound
from openeas.gateway.routes import RouteTable, ServiceLimits, ServiceRoute, Upstream

UPS = tuple(Upstream(f"i{n}", "127.0.0.1", 9000 + n) for n in range(3))


def _state(limits: ServiceLimits | None = None, upstreams=UPS, draining=()) -> ServiceState:
    routes = RouteTable()
    routes.update(ServiceRoute("svc", "t", limits or ServiceLimits(), upstreams, draining))
    return ServiceState("svc", routes, {})


def test_least_outstanding_wins_and_ties_rotate() -> None:
    state = _state()
    picks = [state.pick(state.route()).instance_id for _ in range(6)]  # type: ignore[union-attr]
    assert sorted(picks) == ["i0", "i0", "i1", "i1", "i2", "i2"]
    state.routes.acquire("i0")
    state.routes.acquire("i1")
    assert {state.pick(state.route()).instance_id for _ in range(5)} == {"i2"}  # type: ignore[union-attr]
    assert state.pick(state.route(), exclude={"i2"}).instance_id in {"i0", "i1"}  # type: ignore[union-attr]


def test_max_concurrency_cap_and_draining_excluded() -> None:
    state = _state(ServiceLimits(max_concurrency=1), upstreams=UPS[:1], draining=UPS[1:])
    assert state.pick(state.route()) == UPS[0]
    state.routes.acquire("i0")
    assert state.pick(state.route()) is None  # busy; draining instances never chosen


def test_queue_waits_for_release_then_overflows() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        state = _state(ServiceLimits(max_concurrency=1, max_queue_size=1), upstreams=UPS[:1])
        deadline = Deadline(loop, loop.time() + 30)
        first = await state.choose(deadline)
        state.routes.acquire(first.instance_id)
        waiting = asyncio.ensure_future(state.choose(deadline))
        await asyncio.sleep(0)
        assert len(state.waiters) == 1
        with pytest.raises(QueueFull):
            await state.choose(deadline)
        state.release(first)
        assert await waiting == UPS[0]
        assert not state.waiters
        deadline.cancel()

    asyncio.run(scenario())


def test_queue_wait_expires() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        state = _state(ServiceLimits(max_concurrency=1), upstreams=UPS[:1])
        state.routes.acquire("i0")
        with pytest.raises(Expired):
            await state.choose(Deadline(loop, loop.time() + 0.01))
        assert not state.waiters

    asyncio.run(scenario())


def test_no_instance_and_unknown_service() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        deadline = Deadline(loop, loop.time() + 30)
        with pytest.raises(NoInstance):
            await _state(upstreams=()).choose(deadline)
        state = _state()
        with pytest.raises(NoInstance, match="reached"):
            await state.choose(deadline, exclude=["i0", "i1", "i2"])
        state.routes.remove("svc")
        with pytest.raises(ServiceNotFound):
            await state.choose(deadline)
        deadline.cancel()

    asyncio.run(scenario())


def test_rate_limiter_token_bucket() -> None:
    limiter = RateLimiter()
    for _ in range(2):
        limiter.admit(2.0, 100.0)  # a full bucket of 2
    with pytest.raises(RateLimited, match="2 requests per second"):
        limiter.admit(2.0, 100.0)
    limiter.admit(2.0, 100.5)  # one token back after half a second
    with pytest.raises(RateLimited):
        limiter.admit(2.0, 100.5)
    limiter.admit(None, 100.5)  # unlimited


def test_sequences_stick_until_end_or_idle() -> None:
    state = _state()
    route = state.route()
    assert state.sequence_upstream(route, 5) is None
    state.bind_sequence(5, UPS[2])
    assert state.sequence_upstream(route, 5) == UPS[2]
    state.end_sequence(5)
    assert state.sequence_upstream(route, 5) is None
    state.bind_sequence("s", UPS[1])
    state.expire_sequences(now=10**9)
    assert state.sequence_upstream(route, "s") is None
    # an instance that is gone drops its sequences
    state.bind_sequence(6, Upstream("gone", "h", 1))
    assert state.sequence_upstream(route, 6) is None and 6 not in state.sequences
