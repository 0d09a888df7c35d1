"""ServiceState: least outstanding choice, rotation of ties, limits, queue, sequences;
the platform's rule for the per-instance limit (``rpc.worker_threads``)."""

from __future__ import annotations

import asyncio

import pytest

from openeas.gateway.balancer import RateLimiter, ServiceState
from openeas.gateway.deadline import Deadline, Expired
from openeas.gateway.errors import NoInstance, QueueFull, RateLimited, ServiceNotFound
from openeas.gateway.routes import (
    DEFAULT_MAX_CONCURRENCY,
    RouteTable,
    ServiceLimits,
    ServiceRoute,
    Upstream,
)
from openeas.platform.reconciler import gateway_limits
from openeas.platform.spec import Metadata, ServiceSpec

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


# -- rpc.worker_threads bounds what one instance is sent (platform/reconciler.py) ------


def _metadata(**rpc: int) -> Metadata:
    return Metadata.model_validate({f"rpc.{key}": value for key, value in rpc.items()})


def test_worker_threads_bound_what_an_instance_is_sent() -> None:
    limits = gateway_limits(_metadata(worker_threads=1, max_queue_size=2, keepalive=9000))
    assert (limits.max_concurrency, limits.max_queue_size, limits.keepalive_ms) == (1, 2, 9000)
    # unset: up to 32 in flight per instance (pipelining keeps a fast instance busy)
    assert gateway_limits(_metadata()).max_concurrency == DEFAULT_MAX_CONCURRENCY == 32
    # and it stays unset through the store (a spec is kept as its JSON)
    doc = {"name": "s", "processor": "triton", "processor_params": ["--model-repository=/m"]}
    stored = ServiceSpec.model_validate(doc).to_json()
    assert "rpc.worker_threads" not in stored["metadata"]
    assert gateway_limits(ServiceSpec.model_validate(stored).metadata).max_concurrency == 32


def test_a_flood_beyond_worker_threads_and_queue_is_refused_at_once() -> None:
    # rpc.worker_threads 1, rpc.max_queue_size 2, one instance, 20 requests at once:
    # one is sent, two wait, the other 17 get QueueFull (450) without waiting
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        state = _state(gateway_limits(_metadata(worker_threads=1, max_queue_size=2)), UPS[:1])
        deadline = Deadline(loop, loop.time() + 30)

        async def request() -> str:
            upstream = await state.choose(deadline)
            state.routes.acquire(upstream.instance_id)
            return upstream.instance_id

        tasks = [asyncio.ensure_future(request()) for _ in range(20)]
        await asyncio.sleep(0)  # every request has been admitted or refused by now
        refused = [t for t in tasks if t.done() and isinstance(t.exception(), QueueFull)]
        sent = [t for t in tasks if t.done() and not t.exception()]
        assert (len(sent), len(state.waiters), len(refused)) == (1, 2, 17)
        assert state.routes.in_flight("i0") == 1
        for _ in range(2):  # each release lets the oldest waiting request in
            state.release(UPS[0])
            await asyncio.sleep(0)
            assert state.routes.in_flight("i0") == 1
        assert all(t.done() for t in tasks) and not state.waiters
        deadline.cancel()

    asyncio.run(scenario())


def _held(limits: ServiceLimits | None = None, held: list[str] | None = None) -> ServiceState:
    routes = RouteTable()
    routes.update(ServiceRoute("svc", "t", limits or ServiceLimits(), (), hold=True))
    return ServiceState("svc", routes, {}, on_hold=None if held is None else held.append)


def test_a_held_route_without_instances_queues_until_one_is_published() -> None:
    async def scenario() -> None:
        held_calls: list[str] = []
        loop = asyncio.get_running_loop()
        state = _held(ServiceLimits(max_queue_size=2), held_calls)
        deadline = Deadline(loop, loop.time() + 30)
        assert state.pick_ready(state.route()) is None  # to the queue, not a 503
        waiting = [asyncio.ensure_future(state.choose(deadline)) for _ in range(2)]
        await asyncio.sleep(0)
        assert len(state.waiters) == 2 and held_calls == ["svc", "svc"]
        with pytest.raises(QueueFull, match="rpc.max_queue_size is 2"):
            await state.choose(deadline)
        state.wake_all()  # a route change without an instance: they keep waiting
        await asyncio.sleep(0)
        assert len(state.waiters) == 2 and not any(w.done() for w in waiting)
        state.routes.update(ServiceRoute("svc", "t", ServiceLimits(), UPS[:1], hold=True))
        state.wake_all()
        assert await asyncio.gather(*waiting) == [UPS[0], UPS[0]]
        # no longer held (the route lost ``hold``) and still no instance: 503
        state.routes.update(ServiceRoute("svc", "t"))
        with pytest.raises(NoInstance):
            await state.choose(deadline)
        deadline.cancel()

    asyncio.run(scenario())


def test_a_held_request_expires_after_its_keepalive() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        state = _held()
        with pytest.raises(Expired):
            await state.choose(Deadline(loop, loop.time() + 0.01))
        assert not state.waiters

    asyncio.run(scenario())
