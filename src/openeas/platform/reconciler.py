"""The reconciler: drives every service's instances towards its desired state.

One asyncio task ticks (and is woken by API calls); each tick, per service, it observes
its instances (exits, memory, readiness), restarts crashed ones with a backoff
(:class:`Backoff`), starts missing instances when the resource group has room, drains and
stops surplus or outdated ones only once enough new ones are ready (rolling), publishes the
gateway's route, and records the service's status and events.  Everything runs on the control
plane's event loop, so the store, the route table and this state need no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from openeas.gateway.routes import RouteTable, ServiceLimits, ServiceRoute, Upstream
from openeas.platform.auth import random_token
from openeas.platform.errors import NotFoundError
from openeas.platform.repositories import RepositoryError, resolved_params, sync_repositories
from openeas.platform.resources import Demand, ResourceGroup, pick_cores, pick_gpus, shortage
from openeas.platform.runtimes.base import Exit, Launch, Runtime
from openeas.platform.spec import ServiceSpec
from openeas.platform.store import InstanceRecord, Store
from openeas.protocol import instance_token

log = logging.getLogger("openeas.platform")

#: Status reasons of a service whose ready instance crashed (see ``_Instance.crash``).
_CRASH_REASONS = ("InstanceRestarting", "CrashLoopBackOff")
#: The spec fields that shape an instance's process; other changes keep instances running.
_INSTANCE_METADATA = ("cpu", "memory", "gpu", "gpu_memory", "resource")


@dataclass
class Tuning:
    """Timings of the reconciler (tests shorten them)."""

    tick: float = 0.2
    #: delay before the second restart of a crash streak (the first one is immediate);
    #: each further crash doubles it up to ``backoff_max``
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    #: seconds of readiness after which an instance's crash streak is forgotten
    backoff_reset: float = 600.0
    #: restarts of an instance that never became ready before the service is Failed
    crashloop_restarts: int = 3
    #: seconds an instance may take to become ready before it is restarted
    ready_timeout: float = 300.0
    #: seconds a stopping instance gets before SIGKILL
    stop_grace: float = 30.0
    log_tail_lines: int = 20


@dataclass
class Backoff:
    """The restart delays of one instance, on an injected monotonic clock.

    A crash streak starts with an immediate restart, then waits ``base``, ``2 * base``,
    ... up to ``cap``.  Once the instance has been ready for ``reset_after`` seconds
    without interruption the streak is over: its next crash is restarted at once again.
    (Kubernetes does the same with CrashLoopBackOff: 10 s doubling to 5 min, reset
    after 10 minutes of running.)
    """

    base: float
    cap: float
    reset_after: float
    #: crashes in the current streak
    streak: int = 0
    #: since when the instance has been ready without interruption
    ready_since: float | None = None

    def ready(self, now: float) -> None:
        if self.ready_since is None:
            self.ready_since = now

    def not_ready(self) -> None:
        self.ready_since = None

    def healthy(self, now: float) -> bool:
        return self.ready_since is not None and now - self.ready_since >= self.reset_after

    def crashed(self, now: float) -> float:
        """Record a crash; the seconds to wait before the restart."""
        if self.healthy(now):
            self.streak = 0
        self.ready_since = None
        self.streak += 1
        if self.streak == 1:
            return 0.0
        return min(self.base * 2 ** (self.streak - 2), self.cap)


@dataclass
class _Instance:
    rec: InstanceRecord
    demand: Demand
    backoff: Backoff
    gpus: list[int] = field(default_factory=list)
    ever_ready: bool = False
    launched_at: float = 0.0
    restart_at: float | None = None
    drain_since: float | None = None
    stopping: asyncio.Task[None] | None = None
    #: (reason, message) of its last crash after it had been ready, until ready again
    crash: tuple[str, str] | None = None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the instance binds it moments later)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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
        1 for i in service_instances if i.version == version and i.ready and i.status == "Running"
    )
    return {"total": target, "running": min(running, target), "pending": max(target - running, 0)}


class Reconciler:
    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        routes: RouteTable,
        group: ResourceGroup,
        logs_dir: Path,
        *,
        instance_host: str = "127.0.0.1",
        tuning: Tuning | None = None,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.routes = routes
        self.group = group
        self.logs_dir = logs_dir
        self.instance_host = instance_host
        self.tuning = tuning or Tuning()
        self._instances: dict[str, dict[str, _Instance]] = {}
        self._specs: dict[tuple[str, int], ServiceSpec] = {}
        self._synced: dict[tuple[str, int], list[str]] = {}
        self._syncing: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._published: dict[str, ServiceRoute] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http = httpx.AsyncClient(timeout=2.0)

    # -- lifecycle --------------------------------------------------------------------

    def adopt(self) -> None:
        """Take over the instances an earlier control plane left running."""
        for rec in self.store.instances():
            try:
                spec = self.spec(rec.service, rec.version)
            except Exception:
                self.store.remove_instance(rec.id)
                continue
            inst = _Instance(rec, self._demand(spec), self._backoff(), launched_at=time.monotonic())
            alive = rec.pid is not None and self.runtime.adopt(rec.id, rec.pid)
            if alive:
                inst.ever_ready = rec.ready
                if rec.ready:
                    inst.backoff.ready(time.monotonic())
                if rec.status == "Terminating":
                    inst.drain_since = time.monotonic()
                elif rec.status not in ("Pending", "Running"):
                    rec.status = "Pending"
                self.store.add_event(
                    rec.service, "InstanceAdopted", f"instance {rec.id} (pid {rec.pid}) re-adopted"
                )
            elif rec.status == "Terminating":
                self.store.remove_instance(rec.id)
                continue
            else:
                rec.status, rec.ready, rec.pid = "Restarting", False, None
                inst.restart_at = time.monotonic()
                self.store.add_event(
                    rec.service,
                    "InstanceLost",
                    f"instance {rec.id} was gone after a control-plane restart",
                    "Warning",
                )
            self.store.put_instance(rec)
            self._instances.setdefault(rec.service, {})[rec.id] = inst

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reconciler")

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
        await self._http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciler tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tuning.tick)
            self._wake.clear()

    # -- helpers ----------------------------------------------------------------------

    def spec(self, name: str, version: int) -> ServiceSpec:
        key = (name, version)
        if key not in self._specs:
            self._specs[key] = ServiceSpec.model_validate(self.store.spec(name, version))
        return self._specs[key]

    def _backoff(self) -> Backoff:
        t = self.tuning
        return Backoff(t.backoff_base, t.backoff_max, t.backoff_reset)

    @staticmethod
    def _demand(spec: ServiceSpec) -> Demand:
        m = spec.metadata
        return Demand(m.cpu, m.memory or 0, m.gpu)

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
                inst.rec.version = new_version
                self.store.put_instance(inst.rec)
        return True

    def reset_failures(self, name: str) -> None:
        """Forget crash history (a new version or ``start`` retries a Failed service)."""
        for inst in self.instances(name):
            if inst.rec.status == "Failed":
                self._drop(name, inst)

    def _forget_service(self, name: str) -> None:
        """Drop every cache of a deleted service (a new one may reuse the name)."""
        self._instances.pop(name, None)
        for cache in (self._specs, self._synced):
            for key in [k for k in cache if k[0] == name]:
                del cache[key]

    def _event(self, name: str, reason: str, message: str, warning: bool = False) -> None:
        self.store.add_event(name, reason, message, "Warning" if warning else "Normal")
        log.info("%s: %s: %s", name, reason, message)

    def _status(self, name: str, status: str, reason: str = "", message: str = "") -> None:
        if self.store.set_status(name, status, reason, message):
            warning = status == "Failed" or reason in _CRASH_REASONS
            self._event(name, f"Service{status}", message or reason or status, warning)

    @staticmethod
    def _crash_note(insts: list[_Instance]) -> tuple[str, str]:
        """Why a running service is short of instances, when one of them crashed."""
        crashed = [i.crash for i in insts if i.crash is not None and not i.rec.ready]
        return crashed[0] if crashed else ("", "")

    def _log_tail(self, inst: _Instance) -> str:
        try:
            with open(inst.rec.log_path, "rb") as handle:
                lines = deque(handle, maxlen=self.tuning.log_tail_lines)
        except OSError:
            return ""
        return b"".join(lines).decode(errors="replace").strip()

    def _drop(self, name: str, inst: _Instance) -> None:
        self.runtime.forget(inst.rec.id)
        self.store.remove_instance(inst.rec.id)
        self._instances.get(name, {}).pop(inst.rec.id, None)

    # -- one pass ---------------------------------------------------------------------

    async def tick(self) -> None:
        services = self.store.services()
        await self._observe([i for s in services for i in self.instances(s.name)])
        for service in services:
            try:
                await self._reconcile(service.name)
            except NotFoundError:
                pass  # deleted by an API call while this tick ran
            except Exception:  # one broken service must not stall the others
                log.exception("reconciling service %s failed", service.name)

    async def _observe(self, insts: list[_Instance]) -> None:
        live = [
            i
            for i in insts
            if i.rec.status in ("Pending", "Running")
            and i.stopping is None
            and i.restart_at is None  # launched, not merely scheduled
        ]
        for inst in live:
            ended = self.runtime.exited(inst.rec.id) or self.runtime.enforce_limits(
                inst.rec.id, inst.demand.memory
            )
            if ended is not None:
                self._crashed(inst, ended)
        checks = [i for i in live if i.rec.status in ("Pending", "Running")]
        results = await asyncio.gather(*(self._ready(i) for i in checks))
        now = time.monotonic()
        for inst, ready in zip(checks, results, strict=True):
            rec = inst.rec
            if ready:
                inst.backoff.ready(now)
            else:
                inst.backoff.not_ready()
            if ready and not rec.ready:
                rec.ready, rec.status = True, "Running"
                inst.ever_ready = True
                inst.crash = None
                self._event(
                    rec.service,
                    "InstanceReady",
                    f"instance {rec.id} is ready on {rec.host}:{rec.http_port}",
                )
                self.store.put_instance(rec)
            elif not ready and rec.ready:
                rec.ready = False
                self._event(
                    rec.service,
                    "InstanceNotReady",
                    f"instance {rec.id} stopped answering ready",
                    True,
                )
                self.store.put_instance(rec)
            elif (
                not ready
                and not inst.ever_ready
                and now - inst.launched_at > self.tuning.ready_timeout
            ):
                await self.runtime.stop(rec.id, 5)
                self._crashed(inst, Exit(None, f"not ready after {self.tuning.ready_timeout:.0f}s"))

    async def _ready(self, inst: _Instance) -> bool:
        url = f"http://{inst.rec.host}:{inst.rec.http_port}/v2/health/ready"
        token = inst.rec.internal_token
        headers = {instance_token.HEADER.decode(): token} if token else None
        try:
            response = await self._http.get(url, headers=headers)
        except httpx.HTTPError as exc:
            log.debug("probe %s: %s", url, exc)
            return False
        log.debug("probe %s: %d", url, response.status_code)
        return response.status_code == 200

    def _crashed(self, inst: _Instance, ended: Exit) -> None:
        rec = inst.rec
        rec.ready = False
        rec.restarts += 1
        rec.reason = ended.reason
        tail = self._log_tail(inst)
        oom = ended.reason.startswith("OOMKilled")
        self._event(
            rec.service,
            "InstanceOOMKilled" if oom else "InstanceCrashed",
            f"instance {rec.id} {ended.reason}",
            True,
        )
        if not inst.ever_ready and rec.restarts > self.tuning.crashloop_restarts:
            rec.status = "Failed"
            self.store.put_instance(rec)
            self._status(
                rec.service,
                "Failed",
                "InstanceCrashLoop",
                f"instance {rec.id} keeps failing at start-up ({ended.reason}); last log lines:\n{tail}",
            )
            return
        delay = inst.backoff.crashed(time.monotonic())
        rec.status = "Restarting"
        inst.restart_at = time.monotonic() + delay
        self.store.put_instance(rec)
        if inst.ever_ready:  # the service's status says why it is short of instances
            streak = inst.backoff.streak
            inst.crash = (
                "CrashLoopBackOff" if streak > 1 else "InstanceRestarting",
                f"instance {rec.id} {ended.reason} (crash {streak} in a row, restart in "
                f"{delay:.0f}s); last log lines:\n{tail}",
            )

    async def _reconcile(self, name: str) -> None:
        service = self.store.service(name)
        insts = self.instances(name)
        await self._finish_drains(name, insts)
        insts = self.instances(name)
        if service.desired == "Deleted":
            self._status(name, "Deleting")
            self._drain(name, insts)
            if not self.instances(name):
                self.routes.remove(name)
                self._published.pop(name, None)
                self.store.delete_service(name)
                self._forget_service(name)
            else:
                self._publish(name, service.token)
            return
        spec = self.spec(name, service.current_version)
        if service.desired == "Stopped":
            self._drain(name, insts)
            self._publish(name, service.token, spec)
            self._status(name, "Stopping" if self.instances(name) else "Stopped")
            return
        if service.status == "Failed":
            self._drain(name, [i for i in insts if i.rec.status != "Failed"])
            self._publish(name, service.token, spec)
            return
        version = service.current_version
        key = (name, version)
        # Compare the flags too: a deleted service's late sync may have left its entry.
        if self._synced.get(key) != resolved_params(spec):
            self._sync(name, version, spec, first=service.status == "Creating")
            self._publish(name, service.token, spec)
            return
        target = spec.metadata.instance
        current = [i for i in insts if i.rec.version == version and i.drain_since is None]
        old = [i for i in insts if i.rec.version != version and i.drain_since is None]
        waiting = None
        for _ in range(target - len(current)):
            waiting = self._place(name, spec)
            if waiting:
                break
            current = [
                i
                for i in self.instances(name)
                if i.rec.version == version and i.drain_since is None
            ]
        if waiting and old:
            self._make_room(name, old)
        await self._restart_due(self.instances(name))  # new ones start on this tick
        if len(current) > target:
            surplus = sorted(current, key=lambda i: (i.rec.ready, -i.rec.created_at))[
                : len(current) - target
            ]
            self._drain(name, surplus)
            if surplus:
                self._event(name, "ScalingDown", f"scaling to {target} instance(s)")
        ready = [i for i in current if i.rec.ready]
        if old and len(ready) >= target:
            self._drain(name, old)
        self._publish(name, service.token, spec)
        all_insts = self.instances(name)
        draining = [i for i in all_insts if i.drain_since is not None]
        old_left = [i for i in all_insts if i.rec.version != version]
        if waiting:
            self._status(name, "Waiting", "InsufficientResources", waiting)
        elif old_left:
            self._status(name, "Updating")
        elif len(ready) >= target and not draining:
            self._status(name, "Running")
        elif draining or (service.status in ("Running", "Scaling") and len(current) != len(ready)):
            self._status(name, "Scaling", *self._crash_note(current))
        else:
            self._status(name, "Waiting", *self._crash_note(current))

    def _make_room(self, name: str, old: list[_Instance]) -> None:
        """A full group cannot hold new and old instances side by side: replace one at
        a time, as long as another ready instance keeps serving meanwhile."""
        if any(i.drain_since is not None for i in self.instances(name)):
            return  # one at a time: wait until the last one has stopped
        serving = [i for i in self.instances(name) if i.rec.ready and i.drain_since is None]
        victim = next((i for i in old if not i.rec.ready), None) or (
            old[0] if len(serving) > 1 else None
        )
        if victim is not None:
            self._drain(name, [victim])
            self._event(
                name,
                "UpdateWithoutSurge",
                f"no room for a new instance: replacing {victim.rec.id} first",
            )

    def _sync(self, name: str, version: int, spec: ServiceSpec, first: bool) -> None:
        key = (name, version)
        if key in self._syncing:
            return
        if first:
            self._status(name, "Creating")
        params = resolved_params(spec)

        async def run() -> None:
            try:
                await asyncio.to_thread(sync_repositories, params)
            except RepositoryError as exc:
                self._status(name, "Failed", "SyncFailed", str(exc))
            else:
                self._synced[key] = params
                self._event(name, "SyncSucceeded", "Successfully synchronized resources")
            finally:
                self._syncing.pop(key, None)
                self.wake()

        self._syncing[key] = asyncio.create_task(run())

    def _used(self) -> tuple[list[Demand], list[list[int]], list[list[int]]]:
        insts = [
            i
            for insts in self._instances.values()
            for i in insts.values()
            if i.rec.status != "Failed"
        ]
        return [i.demand for i in insts], [i.rec.cpus for i in insts], [i.gpus for i in insts]

    def _place(self, name: str, spec: ServiceSpec) -> str | None:
        """Start one more instance of the current version; the shortage if it does not fit."""
        demand = self._demand(spec)
        if spec.metadata.resource != self.group.name:
            return f"resource group {spec.metadata.resource!r} does not exist"
        used, cores, gpus = self._used()
        short = shortage(self.group, used, demand)
        if short:
            return short
        service = self.store.service(name)
        instance_id = f"{name}-{secrets.token_hex(3)}"
        rec = InstanceRecord(
            id=instance_id,
            service=name,
            version=service.current_version,
            status="Pending",
            ready=False,
            restarts=0,
            host=self.instance_host,
            http_port=0,
            grpc_port=0,
            metrics_port=0,
            pid=None,
            cpus=pick_cores(demand.cpu, cores),
            log_path=str(self.logs_dir / name / f"{instance_id}.log"),
            reason="",
            created_at=time.time(),
            started_at=None,
        )
        inst = _Instance(
            rec, demand, self._backoff(), gpus=pick_gpus(demand.gpu, gpus, self.group.gpu)
        )
        inst.restart_at = time.monotonic()  # start on this tick
        self._instances.setdefault(name, {})[instance_id] = inst
        self.store.put_instance(rec)
        self._event(name, "InstanceCreated", f"instance {instance_id} scheduled")
        return None

    async def _restart_due(self, insts: list[_Instance]) -> None:
        now = time.monotonic()
        for inst in insts:
            if inst.restart_at is None or inst.restart_at > now or inst.drain_since is not None:
                continue
            inst.restart_at = None
            await self._launch(inst)

    async def _launch(self, inst: _Instance) -> None:
        rec = inst.rec
        params = self._synced.get((rec.service, rec.version))
        if params is None:  # an instance of an older version that is no longer synced
            params = resolved_params(self.spec(rec.service, rec.version))
        self.runtime.forget(rec.id)
        rec.internal_token = random_token(24)  # a new one per process
        rec.http_port, rec.grpc_port, rec.metrics_port = (
            free_port(rec.host),
            free_port(rec.host),
            free_port(rec.host),
        )
        launch = Launch(
            instance_id=rec.id,
            service=rec.service,
            processor_params=params,
            host=rec.host,
            http_port=rec.http_port,
            grpc_port=rec.grpc_port,
            metrics_port=rec.metrics_port,
            log_path=Path(rec.log_path),
            cpus=rec.cpus,
            cpu_count=inst.demand.cpu,
            memory_mb=inst.demand.memory,
            gpus=inst.gpus,
            internal_token=rec.internal_token,
        )
        try:
            rec.pid = await self.runtime.start(launch)
        except OSError as exc:
            self._crashed(inst, Exit(None, f"could not start: {exc}"))
            return
        rec.status, rec.ready, rec.started_at = "Pending", False, time.time()
        inst.launched_at = time.monotonic()
        self.store.put_instance(rec)
        what = "restarted" if rec.restarts else "started"
        self._event(rec.service, "InstanceStarted", f"instance {rec.id} {what} (pid {rec.pid})")

    def _drain(self, name: str, insts: list[_Instance]) -> None:
        now = time.monotonic()
        for inst in insts:
            if inst.drain_since is None:
                inst.drain_since = now
                inst.restart_at = None
                inst.rec.status = "Terminating"
                self.store.put_instance(inst.rec)

    async def _finish_drains(self, name: str, insts: list[_Instance]) -> None:
        """Stop draining instances once the gateway has no request in flight on them."""
        for inst in insts:
            if inst.drain_since is None:
                continue
            if inst.stopping is not None:
                if inst.stopping.done():
                    self._drop(name, inst)
                    self._event(name, "InstanceStopped", f"instance {inst.rec.id} stopped")
                continue
            published = self._published.get(name)
            still_routed = published is not None and any(
                u.instance_id == inst.rec.id for u in published.upstreams
            )
            limit = self.spec(name, inst.rec.version).metadata.rpc_keepalive / 1000 + 5
            idle = self.routes.in_flight(inst.rec.id) == 0
            if still_routed or (not idle and time.monotonic() - inst.drain_since < limit):
                continue
            inst.stopping = asyncio.create_task(
                self.runtime.stop(inst.rec.id, self.tuning.stop_grace)
            )
            inst.stopping.add_done_callback(lambda _t: self.wake())

    def _publish(self, name: str, token: str, spec: ServiceSpec | None = None) -> None:
        insts = self.instances(name)

        def upstream(i: _Instance) -> Upstream:
            return Upstream(
                i.rec.id,
                i.rec.host,
                i.rec.http_port,
                i.rec.grpc_port,
                self.runtime.unix_socket(i.rec.id),
                i.rec.internal_token or None,
            )

        previous = self._published.get(name)
        limits = previous.limits if previous is not None else ServiceLimits()
        if spec is not None:
            m = spec.metadata
            limits = ServiceLimits(
                keepalive_ms=m.rpc_keepalive,
                max_queue_size=m.rpc_max_queue_size,
                rate_limit=float(m.rpc_rate_limit) if m.rpc_rate_limit else None,
            )
        route = ServiceRoute(
            name=name,
            token=token,
            limits=limits,
            upstreams=tuple(
                upstream(i)
                for i in insts
                if i.rec.ready and i.drain_since is None and i.rec.status == "Running"
            ),
            draining=tuple(
                upstream(i) for i in insts if i.drain_since is not None and i.stopping is None
            ),
        )
        if route != previous:
            self.routes.update(route)
            self._published[name] = route
