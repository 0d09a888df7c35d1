"""The reconciler end to end (observe, plan, apply) over a FakeRuntime: no processes.

A real store (SQLite in a temporary directory) and a real route table; the runtime is
:class:`openeas.testing.fake_runtime.FakeRuntime`, told what happens to instances.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from openeas.gateway.routes import RouteTable
from openeas.platform.reconciler import Reconciler, Tuning
from openeas.platform.resources import ResourceGroup
from openeas.platform.routefeed import RouteFeed
from openeas.platform.spec import validate_spec
from openeas.platform.status import Desired, InstanceStatus, ServiceStatus
from openeas.platform.store import Store
from openeas.testing.fake_runtime import FakeRuntime

GROUP = ResourceGroup("default", cpu=4, memory=8000, gpu=0)


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.repo = tmp / "models"
        self.repo.mkdir()
        self.store = Store(tmp / "platform.db")
        self.runtime = FakeRuntime()
        self.routes = RouteTable()
        tuning = Tuning(backoff_base=0.0, crashloop_restarts=2, stop_grace=0.1)
        self.reconciler = Reconciler(self.store, self.runtime, self.routes, GROUP, tuning=tuning)

    def create(self, name: str = "svc", instances: int = 1, **metadata: Any) -> None:
        doc = {
            "name": name,
            "processor": "triton",
            "processor_params": [f"--model-repository={self.repo}"],
            "metadata": {"instance": instances, "cpu": 1, "memory": 100, **metadata},
        }
        spec = validate_spec(doc)
        self.store.create_service(name, spec.token, spec.to_json())

    async def ticks(self, n: int = 1) -> None:
        for _ in range(n):
            await self.reconciler.tick()
            # the background steps (repository sync, stops) finish between ticks
            for task in list(self.reconciler._syncing.values()):
                await task
            for inst in self.reconciler.instances("svc"):
                if inst.stopping is not None:
                    await inst.stopping

    async def until(self, check: Any, limit: int = 20) -> None:
        for _ in range(limit):
            if check():
                return
            await self.ticks()
        raise AssertionError("not reached within the ticks allowed")

    def status(self, name: str = "svc") -> ServiceStatus:
        return self.store.service(name).status

    def routed(self, name: str = "svc") -> list[str]:
        route = self.routes.get(name)
        return [u.instance_id for u in route.upstreams] if route else []

    def ids(self, name: str = "svc") -> list[str]:
        return [i.id for i in self.store.instances(name)]


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.store.close()


async def test_a_service_becomes_running_when_its_instance_is_ready(h: Harness) -> None:
    h.create(instances=2)
    await h.until(lambda: len(h.runtime.instances) == 2)
    assert h.status() == ServiceStatus.WAITING
    assert h.routed() == []
    for instance_id in h.ids():
        h.runtime.make_ready(instance_id)
    await h.until(lambda: h.status() == ServiceStatus.RUNNING)
    assert sorted(h.routed()) == sorted(h.ids())
    rec = h.store.instances("svc")[0]
    address = h.runtime.instances[rec.id].address
    assert (rec.host, rec.http_port, rec.pid, rec.node) == (
        "10.0.0.1",
        address.http_port,
        address.pid,
        "fake-node",
    )
    route = h.routes.get("svc")
    assert route is not None and route.upstreams[0].token == rec.internal_token != ""


async def test_a_crash_restarts_and_the_route_follows(h: Harness) -> None:
    h.runtime.auto_ready = True
    h.create()
    await h.until(lambda: h.status() == ServiceStatus.RUNNING)
    [instance_id] = h.ids()
    first_token = h.store.instances("svc")[0].internal_token
    h.runtime.crash(instance_id, "killed by signal SIGKILL")
    await h.ticks()
    rec = h.store.instances("svc")[0]
    assert rec.restarts == 1 and rec.reason == "killed by signal SIGKILL"
    assert h.runtime.calls.count(("start", instance_id)) == 2  # restarted at once
    assert rec.internal_token != first_token  # a new token per process
    await h.until(lambda: h.status() == ServiceStatus.RUNNING)
    reasons = [e.reason for e in h.store.events("svc")]
    assert "InstanceCrashed" in reasons and reasons.count("InstanceReady") == 2


async def test_a_crash_loop_fails_the_service_with_the_log(h: Harness) -> None:
    h.create()
    for _ in range(10):
        await h.ticks()
        for instance_id in h.runtime.running():
            h.runtime.crash(instance_id, "exited with status 2")
        if h.status() == ServiceStatus.FAILED:
            break
    service = h.store.service("svc")
    assert (service.status, service.reason) == (ServiceStatus.FAILED, "InstanceCrashLoop")
    assert "fatal: exited with status 2" in service.message
    assert h.store.instances("svc")[0].status == InstanceStatus.FAILED


async def test_a_start_the_runtime_refuses_is_retried_with_backoff(h: Harness) -> None:
    h.runtime.refuse_starts("insufficient cpu on every node")
    h.create()
    await h.ticks(3)
    rec = h.store.instances("svc")[0]
    assert rec.reason == "could not start: insufficient cpu on every node"
    assert rec.restarts >= 1
    h.runtime.refuse_starts(None)
    h.runtime.auto_ready = True
    await h.until(lambda: h.status() == ServiceStatus.RUNNING)


async def test_a_hung_instance_is_killed_and_restarted(h: Harness) -> None:
    h.reconciler.tuning.ready_timeout = 0.0
    h.create()
    await h.until(lambda: h.ids() != [])
    [instance_id] = h.ids()
    h.runtime.hang(instance_id)
    await h.until(lambda: h.store.instances("svc")[0].restarts == 1)
    assert ("stop", instance_id) in h.runtime.calls
    assert h.store.instances("svc")[0].reason.startswith("not ready after")


async def test_rolling_update_keeps_a_ready_instance_routed_throughout(h: Harness) -> None:
    h.runtime.auto_ready = True
    h.create(instances=2)
    await h.until(lambda: h.status() == ServiceStatus.RUNNING)
    old = set(h.ids())
    doc = h.store.spec("svc", 1)
    doc["metadata"]["memory"] = 200  # a new process shape: new instances (room for both)
    h.store.add_version("svc", doc)
    h.store.set_status("svc", ServiceStatus.UPDATING)  # as the control plane does
    for _ in range(30):
        await h.ticks()
        assert len(h.routed()) >= 2, "a moment with fewer ready instances than wanted"
        if h.status() == ServiceStatus.RUNNING:
            break
    new = set(h.ids())
    assert h.status() == ServiceStatus.RUNNING and not (old & new) and len(new) == 2
    assert all(("stop", i) in h.runtime.calls for i in old)


async def test_stop_start_and_delete(h: Harness) -> None:
    h.runtime.auto_ready = True
    h.create()
    await h.until(lambda: h.status() == ServiceStatus.RUNNING)
    h.store.update_service("svc", desired=Desired.STOPPED)
    await h.until(lambda: h.status() == ServiceStatus.STOPPED)
    assert h.ids() == [] and h.routed() == [] and h.runtime.running() == []
    h.store.update_service("svc", desired=Desired.RUNNING)
    await h.until(lambda: h.status() == ServiceStatus.RUNNING)
    h.store.update_service("svc", desired=Desired.DELETED)
    await h.until(lambda: not h.store.services())
    assert h.routes.get("svc") is None and h.runtime.running() == []


async def test_adoption_after_a_platform_restart(h: Harness) -> None:
    h.runtime.auto_ready = True
    h.create(instances=2)
    await h.until(lambda: h.status() == ServiceStatus.RUNNING)
    kept, lost = h.ids()
    h.runtime.vanish(lost)
    # A new control plane over the same store and runtime (the processes outlived it).
    again = Reconciler(h.store, h.runtime, RouteTable(), GROUP, tuning=h.reconciler.tuning)
    h.reconciler, h.routes = again, again.routes
    await again.adopt()
    reasons = [e.reason for e in h.store.events("svc")]
    assert "InstanceAdopted" in reasons and "InstanceLost" in reasons
    await h.until(lambda: h.status() == ServiceStatus.RUNNING and len(h.routed()) == 2)
    assert sorted(h.ids()) == sorted([kept, lost])  # no duplicate, the lost one restarted
    assert h.runtime.calls.count(("start", kept)) == 1  # the adopted one kept running


async def test_insufficient_resources_waits_with_the_reason(h: Harness) -> None:
    h.create(instances=1, cpu=8)
    await h.ticks(2)
    service = h.store.service("svc")
    assert (service.status, service.reason) == (ServiceStatus.WAITING, "InsufficientResources")
    assert service.message == "insufficient cpu: need 8, 4 of 4 free in resource group 'default'"
    assert h.runtime.calls == []


async def test_logs_go_through_the_runtime(h: Harness) -> None:
    h.create()
    await h.until(lambda: h.ids() != [])
    [instance_id] = h.ids()
    text, end = h.runtime.read_log("svc", instance_id, tail=5)
    assert text == f"started {instance_id}\n" and end == len(text)


async def test_a_readiness_answer_counts_only_for_its_tick(h: Harness) -> None:
    h.runtime.auto_ready = True
    h.create()
    await h.until(lambda: h.status() == ServiceStatus.RUNNING)
    h.store.update_service("svc", desired=Desired.STOPPED)
    await h.ticks()  # drains the instance: it is no longer probed
    [inst] = h.reconciler.instances("svc")
    assert inst.view.drain_since is not None
    await h.reconciler._observe([inst])
    _, observed = h.reconciler._snapshot(h.store.service("svc"))
    assert [(i.probe, i.exit) for i in observed.instances] == [(None, None)]


async def _drain_the_first_instance(h: Harness, pending: int) -> tuple[str, RouteFeed]:
    """A gateway follows; an update replaces the one instance, which has ``pending``
    requests; returns once the instance is out of the routes."""
    feed = RouteFeed(h.routes)
    h.reconciler.feed = feed
    h.runtime.auto_ready = True
    h.create()
    await h.until(lambda: h.status() == ServiceStatus.RUNNING)
    [old] = h.ids()
    await feed.watch(feed.version, 0, "gw")  # the gateway is up to date
    h.runtime.set_pending(old, pending)
    doc = h.store.spec("svc", 1)
    doc["metadata"]["memory"] = 200  # a new process shape: a new instance replaces it
    h.store.add_version("svc", doc)
    h.store.set_status("svc", ServiceStatus.UPDATING)
    await h.until(lambda: old not in h.routed() and len(h.routed()) == 1)
    return old, feed


async def test_a_drained_instance_waits_for_every_gateway_to_route_around_it(h: Harness) -> None:
    """Across processes a gateway may still send requests to it until it has applied the
    routes without it."""
    old, feed = await _drain_the_first_instance(h, pending=0)
    await h.ticks(5)
    assert ("stop", old) not in h.runtime.calls
    await feed.watch(feed.version, 0, "gw")  # the gateway applied the new routes
    await h.until(lambda: ("stop", old) in h.runtime.calls)


async def test_a_drained_instance_waits_for_its_own_pending_requests(h: Harness) -> None:
    old, feed = await _drain_the_first_instance(h, pending=2)
    await feed.watch(feed.version, 0, "gw")
    await h.ticks(5)
    assert ("stop", old) not in h.runtime.calls  # two requests still in flight on it
    h.runtime.set_pending(old, 0)
    await h.until(lambda: ("stop", old) in h.runtime.calls)
    await h.until(lambda: old not in h.ids())
