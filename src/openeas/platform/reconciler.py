"""The reconciler: drives every service's instances towards its desired state.

One asyncio task ticks (and is woken by API calls).  Each tick has three steps:

1. **observe** every launched instance through the runtime: how it ended (an exit, a
   kill over its memory), whether it answers ready, the end of its log after an exit;
2. **plan** each service: :func:`openeas.platform.plan.plan` turns the service's desired
   state and the observation into a list of actions (pure, unit-tested);
3. **apply** the actions: start, stop and forget instances through the runtime, record
   the instances, statuses and events in the store, publish the gateway's route.

The reconciler never opens a socket or reads a pid: addresses, readiness, logs and limits
belong to the runtime.  Everything runs on the control plane's event loop, so the store,
the route table and this state need no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field, replace

from openeas.gateway.routes import (
    DEFAULT_MAX_CONCURRENCY,
    GroupMember,
    GroupRoute,
    RouteTable,
    ServiceLimits,
    ServiceRoute,
)
from openeas.platform.auth import random_token
from openeas.platform.errors import NotFoundError
from openeas.platform.groups import MemberState, effective_weights
from openeas.platform.plan import (
    Action,
    Backoff,
    Create,
    DeleteService,
    DesiredService,
    Drain,
    InstanceView,
    Kill,
    ObservedService,
    Publish,
    RecordEvent,
    Remove,
    SetStatus,
    Start,
    Stop,
    Sync,
    Tuning,
    Update,
    adoption,
    plan,
    where,
)
from openeas.platform.repositories import RepositoryError, resolved_params, sync_repositories
from openeas.platform.resources import Demand, ResourceGroup, pick_cores, pick_gpus
from openeas.platform.routefeed import RouteFeed
from openeas.platform.runtimes.base import Address, Exit, Launch, Runtime, StartError
from openeas.platform.spec import Metadata, ServiceSpec
from openeas.platform.status import InstanceStatus
from openeas.platform.store import GroupRecord, InstanceRecord, ServiceRecord, Store
from openeas.transport.aio import tick_forever

__all__ = ["Backoff", "Reconciler", "Tuning", "counts", "instance_shape"]

log = logging.getLogger(__name__)

#: The spec fields that shape an instance's process; other changes keep instances running.
_INSTANCE_METADATA = ("cpu", "memory", "gpu", "gpu_memory", "resource")
#: Instance statuses whose process the runtime watches.
_LAUNCHED = (InstanceStatus.PENDING, InstanceStatus.RUNNING)


@dataclass
class _Instance:
    """One instance: its stored record, its bookkeeping (``view``) and running steps."""

    rec: InstanceRecord
    view: InstanceView
    gpus: list[int] = field(default_factory=list)
    stopping: asyncio.Task[None] | None = None
    #: an end the runtime cannot report (a failed start, a kill for not getting ready)
    pending_exit: Exit | None = None

    @property
    def demand(self) -> Demand:
        return self.view.demand


def instance_shape(spec: ServiceSpec) -> tuple[object, ...]:
    """What two versions must share for their instances to be interchangeable."""
    m = spec.metadata
    return (
        tuple(spec.processor_params),
        tuple((s.mount_path, s.oss.path) for s in spec.storage),
        *(getattr(m, key) for key in _INSTANCE_METADATA),
    )


def counts(service_instances: list[InstanceRecord], version: int, target: int) -> dict[str, int]:
    """``Total/Pending/Running`` as eascmd shows them."""
    running = sum(
        1
        for i in service_instances
        if i.version == version and i.ready and i.status == InstanceStatus.RUNNING
    )
    return {"total": target, "running": min(running, target), "pending": max(target - running, 0)}


def gateway_limits(m: Metadata) -> ServiceLimits:
    """The ``rpc.*`` limits the gateway enforces (docs/gateway.md, "Queue").

    Set, ``rpc.worker_threads`` is what one instance may be sent at once, so that
    requests beyond it wait in the gateway's queue, where ``rpc.max_queue_size`` and its
    450 apply, rather than inside the processor.  Unset, the gateway keeps up to
    DEFAULT_MAX_CONCURRENCY requests per instance in flight: pipelined, they keep a fast
    model's instance busy (the throughput of benchmarks/gateway.py), and the queue fills
    only once every instance holds that many.
    """
    return ServiceLimits(
        keepalive_ms=m.rpc_keepalive,
        max_queue_size=m.rpc_max_queue_size,
        rate_limit=float(m.rpc_rate_limit) if m.rpc_rate_limit else None,
        max_concurrency=m.rpc_worker_threads or DEFAULT_MAX_CONCURRENCY,
    )


def _holds(spec: ServiceSpec) -> bool:
    """Whether the gateway holds requests while the service has no ready instance."""
    autoscaler = spec.autoscaler_spec()
    return autoscaler is not None and autoscaler.min == 0


def _demand(spec: ServiceSpec) -> Demand:
    m = spec.metadata
    return Demand(m.cpu, m.memory or 0, m.gpu)


def _address(rec: InstanceRecord) -> Address | None:
    if not rec.http_port:
        return None
    return Address(
        rec.host,
        rec.http_port,
        rec.grpc_port,
        rec.metrics_port,
        rec.unix_socket or None,
        rec.node,
        rec.pid,
    )


class Reconciler:
    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        routes: RouteTable,
        group: ResourceGroup,
        *,
        tuning: Tuning | None = None,
        feed: RouteFeed | None = None,
    ) -> None:
        self.store = store
        #: the gateways' route watch: marked ready after the first pass, asked whether
        #: every gateway has applied the latest routes before a drained instance stops
        self.feed = feed
        self.runtime = runtime
        self.routes = routes
        self.group = group
        self.tuning = tuning or Tuning()
        self._instances: dict[str, dict[str, _Instance]] = {}
        self._specs: dict[tuple[str, int], ServiceSpec] = {}
        self._synced: dict[tuple[str, int], list[str]] = {}
        self._syncing: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._sync_errors: dict[tuple[str, int], str] = {}
        self._published: dict[str, ServiceRoute] = {}
        self._published_groups: dict[str, GroupRoute] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def adopt(self) -> None:
        """Take over the instances an earlier control plane left running."""
        now = time.monotonic()
        for rec in self.store.instances():
            try:
                spec = self.spec(rec.service, rec.version)
            except Exception:
                self.store.remove_instance(rec.id)
                continue
            inst = self._track(rec, spec)
            address = inst.view.address
            alive = address is not None and self.runtime.adopt(self._launch(inst), address)
            await self._apply(rec.service, adoption(inst.view, alive, now))
        known = {i.rec.id for insts in self._instances.values() for i in insts.values()}
        for orphan in self.runtime.stop_orphans(known):
            log.warning("stopped instance %s: no service owns it any more", orphan)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reconciler")

    def groups(self) -> dict[str, ResourceGroup]:
        """The resource groups by name: the runtime's own (a cluster's nodes), else the
        platform's declared group."""
        found = self.runtime.resource_groups()
        return {g.name: g for g in (found if found is not None else [self.group])}

    def wake(self) -> None:
        self._wake.set()

    async def stop_all(self) -> None:
        """Stop the loop and every instance (``openeas down``); desired states are kept."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in self._syncing.values():
            task.cancel()
        stops = []
        for group in list(self._published_groups):
            self.routes.remove_group(group)
        self._published_groups.clear()
        for name, insts in self._instances.items():
            self.routes.remove(name)
            for inst in insts.values():
                stops.append(self.runtime.stop(inst.rec.id, self.tuning.stop_grace))
        await asyncio.gather(*stops, return_exceptions=True)
        for insts in self._instances.values():
            for inst in insts.values():
                self.runtime.forget(inst.rec.id)
                self.store.remove_instance(inst.rec.id)
        self._instances.clear()
        await self.runtime.close()

    async def _run(self) -> None:
        await tick_forever(
            self._first_then_tick, self._wake, self.tuning.tick, log, "reconciler tick"
        )

    async def _first_then_tick(self) -> None:
        try:
            await self.tick()
        finally:
            if self.feed is not None and not self.feed.ready:
                self.feed.ready = True  # every service has been published once

    # -- what the control plane asks --------------------------------------------------

    def spec(self, name: str, version: int) -> ServiceSpec:
        key = (name, version)
        if key not in self._specs:
            self._specs[key] = ServiceSpec.model_validate(self.store.spec(name, version))
        return self._specs[key]

    def instances(self, name: str) -> list[_Instance]:
        return list(self._instances.get(name, {}).values())

    def relabel(self, name: str, old_version: int, new_version: int) -> bool:
        """Move instances to a new version when it runs the same processes; True if so."""
        if instance_shape(self.spec(name, old_version)) != instance_shape(
            self.spec(name, new_version)
        ):
            return False
        if (name, old_version) in self._synced:
            self._synced[(name, new_version)] = self._synced[(name, old_version)]
        for inst in self.instances(name):
            if inst.rec.version == old_version:
                inst.view = replace(inst.view, version=new_version)
                self._persist(inst)
        return True

    def reset_failures(self, name: str) -> None:
        """Forget crash history (a new version or ``start`` retries a Failed service)."""
        for inst in self.instances(name):
            if inst.rec.status == InstanceStatus.FAILED:
                self._drop(name, inst.rec.id)

    def ready(self, name: str) -> int:
        """A service's instances that take requests: those of its published route."""
        route = self._published.get(name)
        return len(route.upstreams) if route is not None else 0

    def group_members(self, group: GroupRecord) -> tuple[GroupMember, ...]:
        """A group's members with their effective weights (:mod:`openeas.platform.groups`)."""
        members = [
            MemberState(s.name, s.traffic_state, s.weight, self.ready(s.name))
            for s in self.store.members(group.name)
        ]
        return effective_weights(group.traffic_mode, members)

    def publish_groups(self) -> None:
        """Publish every service group's route (after the services' own, whose ready
        instances they follow) and withdraw those of deleted groups.  Also called by the
        control plane right after a group change (release, TrafficMode, membership)."""
        current = {}
        for group in self.store.groups():
            route = GroupRoute(group.name, group.token, self.group_members(group))
            current[group.name] = route
            if route != self._published_groups.get(group.name):
                self.routes.update_group(route)
        for gone in set(self._published_groups) - set(current):
            self.routes.remove_group(gone)
        self._published_groups = current

    # -- one pass ---------------------------------------------------------------------

    async def tick(self) -> None:
        services = self.store.services()
        await self._observe([i for s in services for i in self.instances(s.name)])
        for service in services:
            try:
                await self.reconcile(service.name)
            except NotFoundError:
                pass  # deleted by an API call while this tick ran
            except Exception:  # one broken service must not stall the others
                log.exception("reconciling service %s failed", service.name)
        self.publish_groups()

    async def reconcile(self, name: str) -> None:
        """Plan one service from the last observation and apply the plan."""
        desired, observed = self._snapshot(self.store.service(name))
        await self._apply(name, plan(desired, observed, time.monotonic(), self.tuning))

    async def _observe(self, insts: list[_Instance]) -> None:
        """This tick's facts: exits (with their log's tail) and readiness answers."""
        for inst in insts:  # last tick's facts are spent (a plan may not have used them)
            inst.view = inst.view.settled()
        live = [
            i
            for i in insts
            if i.view.status in _LAUNCHED and i.stopping is None and i.view.restart_at is None
        ]
        probes = []
        for inst in live:
            ended = inst.pending_exit or self.runtime.poll(inst.rec.id)
            inst.pending_exit = None
            if ended is None:
                probes.append(inst)
                continue
            tail, _ = self.runtime.read_log(
                inst.rec.service, inst.rec.id, tail=self.tuning.log_tail_lines
            )
            inst.view = replace(inst.view, exit=ended, log_tail=tail.strip())
        results = await asyncio.gather(*(self.runtime.probe(i.rec.id) for i in probes))
        for inst, ready in zip(probes, results, strict=True):
            inst.view = replace(inst.view, probe=ready)
        await self._observe_drains(insts)

    async def _observe_drains(self, insts: list[_Instance]) -> None:
        """A draining instance's in-flight requests: what the instance itself has
        accepted, plus one while some gateway has not yet applied the routes that
        exclude it (it may still send new requests there)."""
        draining = [i for i in insts if i.view.drain_since is not None and i.stopping is None]
        if not draining:
            return
        lagging = int(self.feed is not None and not self.feed.caught_up())
        counts = await asyncio.gather(*(self.runtime.in_flight(i.rec.id) for i in draining))
        for inst, count in zip(draining, counts, strict=True):
            inst.view = replace(inst.view, in_flight=count + lagging)

    def _snapshot(self, service: ServiceRecord) -> tuple[DesiredService, ObservedService]:
        name, version = service.name, service.current_version
        spec = self.spec(name, version)
        m = spec.metadata
        group = self.groups().get(m.resource, ResourceGroup("", 0, 0, 0))
        desired = DesiredService(
            name=name,
            token=service.token,
            desired=service.desired,
            version=version,
            # the count set at create, by a manual change or by the autoscaler/cron controller
            instances=service.replicas,
            demand=_demand(spec),
            resource=m.resource,
            limits=gateway_limits(m),
            hold=_holds(spec),
        )
        key = (name, version)
        observed = ObservedService(
            status=service.status,
            group=group,
            instances=tuple(self._facts(i) for i in self.instances(name)),
            used_elsewhere=tuple(
                i.demand
                for other, insts in self._instances.items()
                if other != name
                for i in insts.values()
                if i.view.status != InstanceStatus.FAILED
                and self.spec(other, i.rec.version).metadata.resource == m.resource
            ),
            # Compare the flags too: a deleted service's late sync may have left its entry.
            synced=self._synced.get(key) == resolved_params(spec),
            syncing=key in self._syncing,
            sync_error=self._sync_errors.pop(key, None),
            published=self._published.get(name),
        )
        return desired, observed

    def _facts(self, inst: _Instance) -> InstanceView:
        stopping = inst.stopping
        return replace(
            inst.view,
            stopping=stopping is not None,
            stopped=stopping is not None and stopping.done(),
        )

    # -- apply ------------------------------------------------------------------------

    async def _apply(self, name: str, actions: list[Action]) -> None:
        for action in actions:
            await self._apply_one(name, action)

    async def _apply_one(self, name: str, action: Action) -> None:
        match action:
            case Create(version):
                await self._create(name, version)
            case Start(instance_id):
                await self._start(self._instances[name][instance_id])
            case Kill(instance_id, reason, grace):
                await self.runtime.stop(instance_id, grace)
                self._instances[name][instance_id].pending_exit = Exit(None, reason)
            case _:
                self._apply_record(name, action)

    def _apply_record(self, name: str, action: Action) -> None:
        """The steps that only record or schedule (no waiting on the runtime)."""
        match action:
            case Update(view):
                self._update(name, view)
            case RecordEvent(reason, message, warning):
                self._event(name, reason, message, warning)
            case SetStatus():
                if self.store.set_status(name, action.status, action.reason, action.message):
                    text = action.message or action.reason or action.status
                    self._event(name, f"Service{action.status}", text, action.warning)
            case Drain(instance_id):
                self._drain(self._instances[name][instance_id])
            case Stop(instance_id):
                self._stop(self._instances[name][instance_id])
            case Remove(instance_id):
                self._drop(name, instance_id)
            case Publish(route):
                if route != self._published.get(name):
                    self.routes.update(route)
                    self._published[name] = route
            case Sync(version):
                self._sync(name, version)
            case DeleteService():
                self._delete(name)

    def _event(self, name: str, reason: str, message: str, warning: bool = False) -> None:
        self.store.add_event(name, reason, message, "Warning" if warning else "Normal")
        log.info("%s: %s: %s", name, reason, message)

    def _update(self, name: str, view: InstanceView) -> None:
        inst = self._instances.get(name, {}).get(view.id)
        if inst is None:
            return
        inst.view = view
        self._persist(inst)

    def _persist(self, inst: _Instance, force: bool = False) -> None:
        """Write the view's user-visible fields into the stored record (if they changed)."""
        rec, view = inst.rec, inst.view
        address = view.address or Address(rec.host, 0, 0)
        new = replace(
            rec,
            version=view.version,
            status=view.status,
            ready=view.ready,
            restarts=view.restarts,
            reason=view.reason,
            host=address.host,
            http_port=address.http_port,
            grpc_port=address.grpc_port,
            metrics_port=address.metrics_port,
            pid=address.pid,
            node=address.node,
            unix_socket=address.unix_socket or "",
            internal_token=view.token,
        )
        if force or new != rec:
            inst.rec = new
            self.store.put_instance(new)

    def _track(self, rec: InstanceRecord, spec: ServiceSpec) -> _Instance:
        """Start tracking a stored instance (at creation or adoption)."""
        m = spec.metadata
        view = InstanceView(
            id=rec.id,
            version=rec.version,
            status=rec.status,
            ready=rec.ready,
            demand=_demand(spec),
            restarts=rec.restarts,
            reason=rec.reason,
            created_at=rec.created_at,
            address=_address(rec),
            token=rec.internal_token,
            drain_limit=m.rpc_keepalive / 1000 + 5,
            backoff=self.tuning.backoff(),
        )
        used_gpus = [i.gpus for insts in self._instances.values() for i in insts.values()]
        inst = _Instance(rec, view, gpus=pick_gpus(m.gpu, used_gpus, self.group.gpu))
        self._instances.setdefault(rec.service, {})[rec.id] = inst
        return inst

    async def _create(self, name: str, version: int) -> None:
        """Place a new instance of ``version`` (cores, GPUs) and start it."""
        spec = self.spec(name, version)
        instance_id = f"{name}-{secrets.token_hex(3)}"
        taken = [i.rec.cpus for insts in self._instances.values() for i in insts.values()]
        rec = InstanceRecord(
            id=instance_id,
            service=name,
            version=version,
            status=InstanceStatus.PENDING,
            ready=False,
            restarts=0,
            host="",
            http_port=0,
            grpc_port=0,
            metrics_port=0,
            pid=None,
            cpus=pick_cores(spec.metadata.cpu, taken),
            log_path="",
            reason="",
            created_at=time.time(),
            started_at=None,
        )
        inst = self._track(rec, spec)
        self.store.put_instance(rec)
        self._event(name, "InstanceCreated", f"instance {instance_id} scheduled")
        await self._start(inst)

    def _launch(self, inst: _Instance) -> Launch:
        rec = inst.rec
        params = self._synced.get((rec.service, rec.version))
        if params is None:  # an instance of an older version that is no longer synced
            params = resolved_params(self.spec(rec.service, rec.version))
        return Launch(
            instance_id=rec.id,
            service=rec.service,
            processor_params=params,
            cpus=rec.cpus,
            cpu_count=inst.demand.cpu,
            memory_mb=inst.demand.memory,
            gpus=inst.gpus,
            gpu_count=inst.demand.gpu,
            resource=self.spec(rec.service, rec.version).metadata.resource,
            internal_token=inst.view.token,
        )

    async def _start(self, inst: _Instance) -> None:
        """Launch through the runtime; a failure is observed as an exit on the next tick."""
        self.runtime.forget(inst.rec.id)
        token = random_token(24)  # a new one per process
        inst.view = replace(inst.view, token=token, restart_at=None)
        launched = replace(
            inst.view, status=InstanceStatus.PENDING, ready=False, launched_at=time.monotonic()
        )
        try:
            address = await self.runtime.start(self._launch(inst))
        except StartError as exc:
            inst.view = replace(launched, address=None)
            inst.pending_exit = Exit(None, f"could not start: {exc}")
            self._persist(inst)
            return
        inst.view = replace(launched, address=address)
        inst.rec = replace(inst.rec, started_at=time.time())
        self._persist(inst, force=True)
        what = "restarted" if inst.rec.restarts else "started"
        self._event(
            inst.rec.service,
            "InstanceStarted",
            f"instance {inst.rec.id} {what} ({where(address)})",
        )

    def _drain(self, inst: _Instance) -> None:
        if inst.view.drain_since is None:
            inst.view = replace(
                inst.view,
                drain_since=time.monotonic(),
                restart_at=None,
                status=InstanceStatus.TERMINATING,
            )
            self._persist(inst)

    def _stop(self, inst: _Instance) -> None:
        inst.stopping = asyncio.create_task(self.runtime.stop(inst.rec.id, self.tuning.stop_grace))
        inst.stopping.add_done_callback(lambda _t: self.wake())

    def _drop(self, name: str, instance_id: str) -> None:
        self.runtime.forget(instance_id)
        self.store.remove_instance(instance_id)
        self._instances.get(name, {}).pop(instance_id, None)

    def _delete(self, name: str) -> None:
        """Drop the service and every cache of it (a new one may reuse the name)."""
        self.routes.remove(name)
        self._published.pop(name, None)
        self.store.delete_service(name)
        self.publish_groups()  # its group's route loses it (or goes with it)
        self._instances.pop(name, None)
        for cache in (self._specs, self._synced):
            for key in [k for k in cache if k[0] == name]:
                del cache[key]

    def _sync(self, name: str, version: int) -> None:
        key = (name, version)
        if key in self._syncing:
            return
        params = resolved_params(self.spec(name, version))

        async def run() -> None:
            try:
                await asyncio.to_thread(sync_repositories, params)
            except RepositoryError as exc:
                self._sync_errors[key] = str(exc)
            else:
                self._synced[key] = params
                self._event(name, "SyncSucceeded", "Successfully synchronized resources")
            finally:
                self._syncing.pop(key, None)
                self.wake()

        self._syncing[key] = asyncio.create_task(run())
