"""The reconciler's decisions as data: ``plan(desired, observed, now) -> [Action]``.

:func:`plan` is pure: it reads what one service should be (:class:`DesiredService`) and
what the last observation found (:class:`ObservedService`: its instances as
:class:`InstanceView` snapshots with this tick's facts -- an exit, a readiness answer --,
the capacity its resource group has left, the route the gateway has), and returns the
steps that bring the service closer: start, restart, drain, stop, forget instances, record
their new bookkeeping, publish the route, set the service's status, record events.  No
clock, no I/O, no randomness: the reconciler's ``apply`` performs the steps through the
runtime, the store and the route table (Ray Serve's ``DeploymentState`` returns its
scaling decisions as data in the same way).  :func:`adoption` decides what a restarted
control plane does with each instance it finds in the store.

The rules (docs/platform.md, "Lifecycle"):

* a crashed instance restarts after its :class:`Backoff` delay; one that crashes
  ``crashloop_restarts`` + 1 times before ever being ready fails the service
  (``InstanceCrashLoop``); a ready instance that crashes gives the service the reason
  ``InstanceRestarting`` / ``CrashLoopBackOff`` until it is ready again;
* new instances start only when the group has room (else ``Waiting`` with EAS's
  ``InsufficientResources`` reason); old versions leave the route only once enough new
  instances are ready (surge), or one at a time while another ready instance serves when
  the group is full (``UpdateWithoutSurge``); scale-down drains the surplus, not-ready and
  newest first;
* a draining instance is stopped once it is out of the route and the gateway has no
  request in flight on it (or its keepalive has passed): no request fails for a rollout.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

from openeas.gateway.routes import ServiceLimits, ServiceRoute, Upstream
from openeas.platform.resources import Demand, ResourceGroup, shortage
from openeas.platform.runtimes.base import Address, Exit
from openeas.platform.status import CRASH_REASONS, Desired, InstanceStatus, ServiceStatus

__all__ = [
    "Action",
    "Backoff",
    "Create",
    "DeleteService",
    "DesiredService",
    "Drain",
    "InstanceView",
    "Kill",
    "ObservedService",
    "Publish",
    "RecordEvent",
    "Remove",
    "SetStatus",
    "Start",
    "Stop",
    "Sync",
    "Tuning",
    "Update",
    "adoption",
    "plan",
    "where",
]


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

    def backoff(self) -> Backoff:
        return Backoff(self.backoff_base, self.backoff_max, self.backoff_reset)


@dataclass
class Backoff:
    """The restart delays of one instance, on an injected monotonic clock.

    A crash streak starts with an immediate restart, then waits ``base``, ``2 * base``,
    ... up to ``cap``.  Once the instance has been ready for ``reset_after`` seconds
    without interruption the streak is over: its next crash is restarted at once again.
    (Kubernetes does the same with CrashLoopBackOff: 10 s doubling to 5 min, reset
    after 10 minutes of running.)  :func:`plan` works on copies.
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


# -- inputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DesiredService:
    """What one service should be."""

    name: str
    token: str
    desired: Desired
    version: int
    #: instances wanted (the service's ``replicas``: ``metadata.instance`` at create,
    #: then a manual change or the scaling controller's decisions)
    instances: int
    demand: Demand
    resource: str
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    #: the gateway holds requests while no instance is ready (an autoscaler that may
    #: scale to zero: the held request is what activates the service again)
    hold: bool = False


@dataclass(frozen=True)
class InstanceView:
    """One instance as the reconciler tracks it, plus this tick's facts about it."""

    id: str
    version: int
    status: InstanceStatus
    ready: bool = False
    demand: Demand = Demand(1, 0, 0)
    restarts: int = 0
    #: the last exit's reason (shown by ``eascmd instances``)
    reason: str = ""
    #: wall-clock creation time (scale-down drains the newest first)
    created_at: float = 0.0
    #: where it answers (None until the runtime started it)
    address: Address | None = None
    token: str = field(default="", repr=False)
    ever_ready: bool = False
    #: monotonic times: last launch, scheduled restart, drain start
    launched_at: float = 0.0
    restart_at: float | None = None
    drain_since: float | None = None
    #: seconds a draining instance waits for its in-flight requests (keepalive + 5 s)
    drain_limit: float = 10.0
    backoff: Backoff = field(default_factory=lambda: Tuning().backoff())
    #: (reason, message) of its last crash after it had been ready, until ready again
    crash: tuple[str, str] | None = None
    # -- facts of this tick (the observation) --
    #: a stop is under way / has finished
    stopping: bool = False
    stopped: bool = False
    #: requests in flight on it, asked while it drains (the instance's pending count,
    #: plus one while a gateway has not applied the routes that exclude it)
    in_flight: int = 0
    #: how it ended since the last tick (None: still running or not launched)
    exit: Exit | None = None
    #: the last lines of its log, read when it ended
    log_tail: str = ""
    #: its readiness answer (None: not asked this tick)
    probe: bool | None = None

    def settled(self) -> InstanceView:
        """Without this tick's facts: what the reconciler keeps."""
        return replace(
            self,
            stopping=False,
            stopped=False,
            in_flight=0,
            exit=None,
            log_tail="",
            probe=None,
        )


@dataclass(frozen=True)
class ObservedService:
    """What the last observation found of one service."""

    status: ServiceStatus
    group: ResourceGroup
    instances: tuple[InstanceView, ...] = ()
    #: what other services' instances hold in the same group
    used_elsewhere: tuple[Demand, ...] = ()
    #: the desired version's repositories are synchronised / being synchronised
    synced: bool = True
    syncing: bool = False
    #: the last synchronisation's error (reported once)
    sync_error: str | None = None
    #: the route the gateway has now
    published: ServiceRoute | None = None


# -- actions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    """Place a new instance of ``version`` and start it."""

    version: int


@dataclass(frozen=True)
class Start:
    """(Re)launch an instance whose restart is due."""

    instance_id: str


@dataclass(frozen=True)
class Update:
    """The instance's bookkeeping is now ``instance`` (status, readiness, crash record)."""

    instance: InstanceView


@dataclass(frozen=True)
class Kill:
    """Stop an instance that never became ready; its next observation reports ``reason``."""

    instance_id: str
    reason: str
    grace: float = 5.0


@dataclass(frozen=True)
class Drain:
    """Take the instance out of the route (it keeps serving what it has in flight)."""

    instance_id: str


@dataclass(frozen=True)
class Stop:
    """Stop a drained instance (SIGTERM, SIGKILL after the stop grace)."""

    instance_id: str


@dataclass(frozen=True)
class Remove:
    """Forget an instance that has stopped (or is gone)."""

    instance_id: str


@dataclass(frozen=True)
class Publish:
    """Give the gateway this route (apply skips it when unchanged)."""

    route: ServiceRoute


@dataclass(frozen=True)
class SetStatus:
    status: ServiceStatus
    reason: str = ""
    message: str = ""

    @property
    def warning(self) -> bool:
        return self.status == ServiceStatus.FAILED or self.reason in CRASH_REASONS


@dataclass(frozen=True)
class RecordEvent:
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Sync:
    """Synchronise the repositories of ``version`` (in the background)."""

    version: int


@dataclass(frozen=True)
class DeleteService:
    """Every instance has stopped: remove the route and the service's records."""


Action = (
    Create
    | Start
    | Update
    | Kill
    | Drain
    | Stop
    | Remove
    | Publish
    | SetStatus
    | RecordEvent
    | Sync
    | DeleteService
)


# -- the planner ----------------------------------------------------------------------


def plan(
    desired: DesiredService, observed: ObservedService, now: float, tuning: Tuning | None = None
) -> list[Action]:
    """The steps that bring one service closer to ``desired``, in the order to apply them."""
    return _Planner(desired, observed, now, tuning or Tuning()).run()


def adoption(inst: InstanceView, alive: bool, now: float) -> list[Action]:
    """What a restarted control plane does with an instance it finds in the store:
    keep it when the runtime could take it over (``alive``), else restart it (or forget
    it when it was being stopped anyway)."""
    if not alive:
        if inst.status == InstanceStatus.TERMINATING:
            return [Remove(inst.id)]
        lost = replace(
            inst, status=InstanceStatus.RESTARTING, ready=False, address=None, restart_at=now
        )
        message = f"instance {inst.id} was gone after a control-plane restart"
        return [Update(lost), RecordEvent("InstanceLost", message, warning=True)]
    backoff = copy.copy(inst.backoff)
    if inst.ready:
        backoff.ready(now)
    kept = replace(inst, ever_ready=inst.ready, backoff=backoff, launched_at=now)
    if inst.status == InstanceStatus.TERMINATING:
        kept = replace(kept, drain_since=now)
    elif inst.status not in (InstanceStatus.PENDING, InstanceStatus.RUNNING):
        kept = replace(kept, status=InstanceStatus.PENDING)
    message = f"instance {inst.id} ({where(inst.address)}) re-adopted"
    return [Update(kept), RecordEvent("InstanceAdopted", message)]


def where(address: Address | None) -> str:
    """Where an instance runs, for events: its node, or its pid on this machine."""
    if address is None:
        return "no address"
    if address.node:
        return f"node {address.node}"
    return f"pid {address.pid}"


def _upstream(inst: InstanceView) -> Upstream | None:
    a = inst.address
    if a is None:
        return None
    return Upstream(inst.id, a.host, a.http_port, a.grpc_port, a.unix_socket, inst.token or None)


class _Planner:
    """One service's plan; works on copies of the views, in the order of the rules."""

    def __init__(
        self, desired: DesiredService, observed: ObservedService, now: float, tuning: Tuning
    ) -> None:
        self.d = desired
        self.o = observed
        self.now = now
        self.t = tuning
        self.insts = {i.id: i for i in observed.instances}
        self.status = observed.status
        self.actions: list[Action] = []
        self._placed = 0

    def run(self) -> list[Action]:
        for inst in list(self.insts.values()):
            self._watch(inst)
        self._finish_drains()
        if self.d.desired == Desired.DELETED:
            self._delete()
        elif self.d.desired == Desired.STOPPED:
            self._stop()
        else:
            self._run()
        return self.actions

    # -- small steps -------------------------------------------------------------------

    def _event(self, reason: str, message: str, warning: bool = False) -> None:
        self.actions.append(RecordEvent(reason, message, warning))

    def _set_status(self, status: ServiceStatus, reason: str = "", message: str = "") -> None:
        self.status = status
        self.actions.append(SetStatus(status, reason, message))

    def _update(self, new: InstanceView) -> None:
        old = self.insts[new.id]
        self.insts[new.id] = new
        if new.settled() != old.settled():
            self.actions.append(Update(new.settled()))

    def _drain(self, insts: list[InstanceView]) -> None:
        for inst in insts:
            current = self.insts[inst.id]
            if current.drain_since is None:
                self.insts[inst.id] = replace(
                    current,
                    drain_since=self.now,
                    restart_at=None,
                    status=InstanceStatus.TERMINATING,
                )
                self.actions.append(Drain(inst.id))

    def _publish(self) -> None:
        insts = list(self.insts.values())
        serving = [
            i
            for i in insts
            if i.ready and i.drain_since is None and i.status == InstanceStatus.RUNNING
        ]
        draining = [i for i in insts if i.drain_since is not None and not i.stopping]
        route = ServiceRoute(
            name=self.d.name,
            token=self.d.token,
            limits=self.d.limits,
            hold=self.d.hold,
            upstreams=tuple(u for u in map(_upstream, serving) if u is not None),
            draining=tuple(u for u in map(_upstream, draining) if u is not None),
        )
        self.actions.append(Publish(route))

    # -- what the observation found ----------------------------------------------------

    def _watch(self, inst: InstanceView) -> None:
        if inst.exit is not None:
            self._crashed(inst, inst.exit.reason)
        elif inst.probe is not None:
            self._probed(inst, inst.probe)

    def _probed(self, inst: InstanceView, ready: bool) -> None:
        backoff = copy.copy(inst.backoff)
        if ready:
            backoff.ready(self.now)
        else:
            backoff.not_ready()
        new = replace(inst, backoff=backoff)
        if ready and not inst.ready:
            new = replace(
                new, ready=True, status=InstanceStatus.RUNNING, ever_ready=True, crash=None
            )
            at = f"{inst.address.host}:{inst.address.http_port}" if inst.address else "?"
            self._event("InstanceReady", f"instance {inst.id} is ready on {at}")
        elif not ready and inst.ready:
            new = replace(new, ready=False)
            self._event("InstanceNotReady", f"instance {inst.id} stopped answering ready", True)
        elif (
            not ready and not inst.ever_ready and self.now - inst.launched_at > self.t.ready_timeout
        ):
            reason = f"not ready after {self.t.ready_timeout:.0f}s"
            self.actions.append(Kill(inst.id, reason))
        self._update(new)

    def _crashed(self, inst: InstanceView, reason: str) -> None:
        restarts = inst.restarts + 1
        kind = (
            "InstanceOOMKilled"
            if reason.startswith("OOMKilled")
            else "InstanceLost"
            if reason.startswith("NodeLost")
            else "InstanceCrashed"
        )
        self._event(kind, f"instance {inst.id} {reason}", True)
        ended = replace(inst, ready=False, restarts=restarts, reason=reason)
        if not inst.ever_ready and restarts > self.t.crashloop_restarts:
            self._update(replace(ended, status=InstanceStatus.FAILED, restart_at=None))
            self._set_status(
                ServiceStatus.FAILED,
                "InstanceCrashLoop",
                f"instance {inst.id} keeps failing at start-up ({reason}); "
                f"last log lines:\n{inst.log_tail}",
            )
            return
        backoff = copy.copy(inst.backoff)
        delay = backoff.crashed(self.now)
        crash = inst.crash
        if inst.ever_ready:  # the service's status says why it is short of instances
            streak = backoff.streak
            crash = (
                "CrashLoopBackOff" if streak > 1 else "InstanceRestarting",
                f"instance {inst.id} {reason} (crash {streak} in a row, restart in "
                f"{delay:.0f}s); last log lines:\n{inst.log_tail}",
            )
        self._update(
            replace(
                ended,
                status=InstanceStatus.RESTARTING,
                restart_at=self.now + delay,
                backoff=backoff,
                crash=crash,
            )
        )

    def _finish_drains(self) -> None:
        """Stop draining instances once no request is in flight on them."""
        published = self.o.published
        routed = {u.instance_id for u in published.upstreams} if published else set()
        for inst in list(self.insts.values()):
            if inst.drain_since is None or (inst.stopping and not inst.stopped):
                continue
            if inst.stopped:
                del self.insts[inst.id]
                self.actions.append(Remove(inst.id))
                self._event("InstanceStopped", f"instance {inst.id} stopped")
                continue
            waited = self.now - inst.drain_since
            if inst.id in routed or (inst.in_flight and waited < inst.drain_limit):
                continue
            self.insts[inst.id] = replace(inst, stopping=True)
            self.actions.append(Stop(inst.id))

    # -- desired states ----------------------------------------------------------------

    def _delete(self) -> None:
        self._set_status(ServiceStatus.DELETING)
        self._drain(list(self.insts.values()))
        if self.insts:
            self._publish()
        else:
            self.actions.append(DeleteService())

    def _stop(self) -> None:
        self._drain(list(self.insts.values()))
        self._publish()
        self._set_status(ServiceStatus.STOPPING if self.insts else ServiceStatus.STOPPED)

    def _failed(self) -> None:
        self._drain([i for i in self.insts.values() if i.status != InstanceStatus.FAILED])
        self._publish()

    def _run(self) -> None:
        if self.o.sync_error is not None and self.status != ServiceStatus.FAILED:
            self._set_status(ServiceStatus.FAILED, "SyncFailed", self.o.sync_error)
        if self.status == ServiceStatus.FAILED:
            self._failed()
            return
        if not self.o.synced:
            if not self.o.syncing:
                self.actions.append(Sync(self.d.version))
            self._publish()
            return
        self._converge()

    # -- a running service -------------------------------------------------------------

    def _current(self) -> list[InstanceView]:
        return [
            i for i in self.insts.values() if i.version == self.d.version and i.drain_since is None
        ]

    def _converge(self) -> None:
        target = self.d.instances
        old = [
            i for i in self.insts.values() if i.version != self.d.version and i.drain_since is None
        ]
        waiting = self._scale_up(target - len(self._current()))
        if waiting and old:
            self._make_room(old)
        self._restart_due()
        current = self._current()
        if len(current) > target:
            surplus = sorted(current, key=lambda i: (i.ready, -i.created_at))
            self._drain(surplus[: len(current) - target])
            self._event("ScalingDown", f"scaling to {target} instance(s)")
        ready = [i for i in current if i.ready]
        if old and len(ready) >= target:
            self._drain(old)
        self._publish()
        self._settle(waiting, current, ready)

    def _shortage(self) -> str | None:
        group = self.o.group
        if self.d.resource != group.name:
            return f"resource group {self.d.resource!r} does not exist"
        used = [
            *self.o.used_elsewhere,
            *(i.demand for i in self.insts.values() if i.status != InstanceStatus.FAILED),
        ]
        return shortage(group, used, self.d.demand)

    def _scale_up(self, missing: int) -> str | None:
        """Create up to ``missing`` instances; the shortage that stopped it, if any."""
        for _ in range(missing):
            short = self._shortage()
            if short:
                return short
            self._placed += 1
            planned = InstanceView(
                id=f"<new {self._placed}>",
                version=self.d.version,
                status=InstanceStatus.PENDING,
                demand=self.d.demand,
                created_at=math.inf,  # newest of all
                launched_at=self.now,
            )
            self.insts[planned.id] = planned  # counts as an instance for the rest of the plan
            self.actions.append(Create(self.d.version))
        return None

    def _make_room(self, old: list[InstanceView]) -> None:
        """A full group cannot hold new and old instances side by side: replace one at
        a time, as long as another ready instance keeps serving meanwhile."""
        insts = list(self.insts.values())
        if any(i.drain_since is not None for i in insts):
            return  # one at a time: wait until the last one has stopped
        serving = [i for i in insts if i.ready and i.drain_since is None]
        victim = next((i for i in old if not i.ready), None) or (
            old[0] if len(serving) > 1 else None
        )
        if victim is not None:
            self._drain([victim])
            self._event(
                "UpdateWithoutSurge", f"no room for a new instance: replacing {victim.id} first"
            )

    def _restart_due(self) -> None:
        for inst in list(self.insts.values()):
            due = inst.restart_at is not None and inst.restart_at <= self.now
            if due and inst.drain_since is None:
                self.insts[inst.id] = replace(
                    inst, restart_at=None, status=InstanceStatus.PENDING, launched_at=self.now
                )
                self.actions.append(Start(inst.id))

    def _settle(
        self, waiting: str | None, current: list[InstanceView], ready: list[InstanceView]
    ) -> None:
        """The service's status once this tick's steps are taken."""
        insts = list(self.insts.values())
        draining = any(i.drain_since is not None for i in insts)
        if waiting:
            self._set_status(ServiceStatus.WAITING, "InsufficientResources", waiting)
        elif any(i.version != self.d.version for i in insts):
            self._set_status(ServiceStatus.UPDATING)
        elif len(ready) >= self.d.instances and not draining:
            self._set_status(ServiceStatus.RUNNING)
        elif draining or (
            self.status in (ServiceStatus.RUNNING, ServiceStatus.SCALING)
            and len(current) != len(ready)
        ):
            self._set_status(ServiceStatus.SCALING, *self._crash_note(current))
        else:
            self._set_status(ServiceStatus.WAITING, *self._crash_note(current))

    def _crash_note(self, current: list[InstanceView]) -> tuple[str, str]:
        """Why a running service is short of instances, when one of them crashed."""
        latest = [self.insts.get(i.id, i) for i in current]
        crashed = [i.crash for i in latest if i.crash is not None and not i.ready]
        return crashed[0] if crashed else ("", "")
