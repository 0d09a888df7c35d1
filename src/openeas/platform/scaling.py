"""The scaling controller: applies each service's ``autoscaler`` and ``cronscaler``.

Once a period (and at once when a gateway reports a request waiting for a service with
no instance) the controller, for every running service with either document:

1. **samples** its metrics: the service's request rate and requests in flight (held
   ones included) from the gateways' traffic reports, and each ready instance's CPU
   time from the runtime, into a short history (:class:`~.elastic.policy.MetricsHistory`);
2. **decides**: the scheduled target (:func:`~.elastic.cron.evaluate`) and the
   autoscaling policy (:func:`~.elastic.policy.decide`, a pure function) give the
   instance count the service should have;
3. **applies** a changed count: the service's ``replicas`` and an event that explains the
   decision are written in one transaction, and the reconciler is woken.  The
   reconciler does the rest with the machinery every count change uses (new instances
   take traffic once ready; surplus ones are drained of their requests, then stopped).

The controller never starts or stops an instance itself, and keeps nothing that cannot
be lost: after a control-plane restart the history starts again (so nothing scales down
before a full window of new samples) and the count stays where ``replicas`` left it.

Per-instance values are per instance of the *set* count (``replicas``), not of the ready
ones: while new instances start, the service's rate divided by the set count is what
each will carry, so a load that already caused a scale-up does not cause another one
before the new instances are ready (Kubernetes' HPA counts not-yet-ready pods the same
way for scale-up).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from openeas.platform.elastic.autoscaler import AutoscalerSpec
from openeas.platform.elastic.cron import CronScalerSpec, CronState, Firing, evaluate
from openeas.platform.elastic.policy import (
    Decision,
    MetricsHistory,
    Recommendations,
    Sample,
    Window,
    decide,
)
from openeas.platform.errors import NotFoundError
from openeas.platform.status import Desired, InstanceStatus
from openeas.platform.traffic import ServiceTraffic
from openeas.transport.aio import cancel_and_wait, tick_forever

if TYPE_CHECKING:
    from openeas.platform.reconciler import Reconciler
    from openeas.platform.store import ServiceRecord, Store

log = logging.getLogger(__name__)

#: Seconds between two decisions of a service (the sampling period as well).
PERIOD = 1.0


class TrafficSource(Protocol):
    """Where the controller reads a service's traffic (the control plane's
    :class:`~openeas.platform.traffic.TrafficBook`, fed by the gateways' reports)."""

    def sample(self, service: str, now: float) -> ServiceTraffic: ...


class NoTrafficSource:
    """For a control plane without gateways reporting (tests of the cron path alone)."""

    def sample(self, service: str, now: float) -> ServiceTraffic:
        return ServiceTraffic()


# -- decisions as data --------------------------------------------------------------------


class ScaleReason:
    """The event reasons of the controller's decisions (``eascmd events``)."""

    SCALE_UP = "AutoscalerScaleUp"
    SCALE_DOWN = "AutoscalerScaleDown"
    TO_ZERO = "ScaledToZero"
    FROM_ZERO = "ActivatedFromZero"
    CRON_FIRED = "CronJobFired"
    CRON_SCALED = "CronScaling"


@dataclass(frozen=True)
class Change:
    """Set the service's count to ``replicas``, recorded with an event."""

    replicas: int
    reason: str
    message: str


@dataclass(frozen=True)
class Note:
    """An event without a change of count (a cron job fired at its target already)."""

    reason: str
    message: str


@dataclass
class _ServiceScaling:
    """What the controller remembers of one service between decisions."""

    #: the documents the state below belongs to (a change starts it again)
    autoscaler_key: str = ""
    cron_key: str = ""
    recommendations: Recommendations = field(default_factory=Recommendations)
    cron: CronState | None = None
    cron_evaluated: datetime | None = None
    #: instance id -> (CPU seconds, monotonic time) of its last reading
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: the last decision of the autoscaler, and when it was made (wall clock)
    decision: Decision | None = None
    decided_at: float | None = None
    #: the last sample taken
    sample: Sample | None = None


def _key(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True) if doc is not None else ""


def _iso(ts: float | datetime | None) -> str | None:
    if ts is None:
        return None
    moment = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _firing_json(firing: Firing | None) -> dict[str, Any] | None:
    if firing is None:
        return None
    return {"job": firing.job, "time": _iso(firing.time), "targetSize": firing.target_size}


def change_for(decision: Decision) -> Change | None:
    """The change an autoscaling decision makes, with its event (None: no change)."""
    if not decision.changed:
        return None
    if decision.desired == 0:
        reason = ScaleReason.TO_ZERO
    elif decision.current == 0:
        reason = ScaleReason.FROM_ZERO
    elif decision.desired > decision.current:
        reason = ScaleReason.SCALE_UP
    else:
        reason = ScaleReason.SCALE_DOWN
    return Change(decision.desired, reason, decision.reason)


def cron_change(replicas: int, state: CronState) -> Change | None:
    """Without an autoscaler, the active scheduled target is the count."""
    if state.target is None or state.target == replicas or state.last is None:
        return None
    message = (
        f"cron job {state.last.job!r} (fired {_iso(state.last.time)}): {replicas} -> {state.target}"
    )
    return Change(state.target, ScaleReason.CRON_SCALED, message)


def fired_note(state: CronState) -> Note | None:
    if not state.fired or state.last is None:
        return None
    last = state.last
    return Note(
        ScaleReason.CRON_FIRED,
        f"cron job {last.job!r} fired at {_iso(last.time)}: target size {last.target_size}",
    )


# -- the controller -----------------------------------------------------------------------


class ScalingController:
    def __init__(
        self,
        store: Store,
        reconciler: Reconciler,
        traffic: TrafficSource | None = None,
        *,
        period: float = PERIOD,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.reconciler = reconciler
        self.traffic: TrafficSource = traffic or NoTrafficSource()
        self.period = period
        self._clock = clock
        self._wall = wall
        self.history = MetricsHistory()
        self._services: dict[str, _ServiceScaling] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scaling")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def wake(self, _service: str | None = None) -> None:
        """Decide at once (a request waits for a service at zero instances)."""
        self._wake.set()

    async def _run(self) -> None:
        await tick_forever(self.tick, self._wake, self.period, log, "scaling tick")

    # -- one round --------------------------------------------------------------------

    async def tick(self) -> None:
        now, wall = self._clock(), self._wall()
        active: set[str] = set()
        for record in self.store.services():
            if record.desired != Desired.RUNNING:
                continue
            spec = self.reconciler.spec(record.name, record.current_version)
            autoscaler, cron = spec.autoscaler_spec(), spec.cronscaler_spec()
            if autoscaler is None and cron is None:
                continue
            active.add(record.name)
            try:
                await self._service(record, autoscaler, cron, now, wall, spec.metadata.cpu)
            except NotFoundError:
                pass  # deleted meanwhile
            except Exception:  # one service's trouble must not stop the others' scaling
                log.exception("scaling service %s failed", record.name)
        for gone in set(self._services) - active:
            del self._services[gone]
            self.history.forget(gone)

    async def _service(
        self,
        record: ServiceRecord,
        autoscaler: AutoscalerSpec | None,
        cron: CronScalerSpec | None,
        now: float,
        wall: float,
        cores: float,
    ) -> None:
        name = record.name
        state = self._state(name, autoscaler, cron)
        steps: list[Change | Note] = []
        cron_state = self._cron(record, cron, state, wall)
        if cron_state is not None and (note := fired_note(cron_state)) is not None:
            steps.append(note)
        cron_target = cron_state.target if cron_state is not None else None
        if autoscaler is None:
            change = cron_change(record.replicas, cron_state) if cron_state else None
        else:
            sample = await self._sample(name, record.replicas, cores, now)
            self.history.add(name, sample)
            state.sample = sample
            decision = decide(
                autoscaler,
                record.replicas,
                self.history.metrics(name),
                state.recommendations,
                now,
                cron_target,
            )
            state.recommendations = decision.recommendations
            state.decision, state.decided_at = decision, wall
            change = change_for(decision)
        if change is not None:
            steps.append(change)
        self._apply(name, steps)

    def _state(
        self, name: str, autoscaler: AutoscalerSpec | None, cron: CronScalerSpec | None
    ) -> _ServiceScaling:
        state = self._services.setdefault(name, _ServiceScaling())
        auto_key = _key(autoscaler.to_json() if autoscaler else None)
        if auto_key != state.autoscaler_key:  # a new autoscaler starts from no history
            state.autoscaler_key = auto_key
            state.recommendations = Recommendations()
            state.decision = None
        cron_key = _key(cron.to_json() if cron else None)
        if cron_key != state.cron_key:
            state.cron_key, state.cron, state.cron_evaluated = cron_key, None, None
        return state

    def _cron(
        self,
        record: ServiceRecord,
        cron: CronScalerSpec | None,
        state: _ServiceScaling,
        wall: float,
    ) -> CronState | None:
        """The scheduled target, evaluated again only when a firing is due."""
        if cron is None:
            return None
        now = datetime.fromtimestamp(wall, UTC)
        due = state.cron is None or (state.cron.next is not None and state.cron.next.time <= now)
        if not due:
            assert state.cron is not None
            return CronState(state.cron.target, state.cron.last, False, state.cron.next)
        set_at = datetime.fromtimestamp(record.cron_set_at or record.created_at, UTC)
        result = evaluate(cron, set_at, now, state.cron_evaluated)
        if state.cron_evaluated is None:
            # The first evaluation (a new cronscaler, or after a restart): a firing from
            # before it is the active target, not news.
            result = CronState(result.target, result.last, False, result.next)
        state.cron, state.cron_evaluated = result, now
        return result

    async def _sample(self, name: str, replicas: int, cores: float, now: float) -> Sample:
        traffic = self.traffic.sample(name, now)
        per = max(replicas, 1)
        cpu = await self._cpu_percent(name, cores, now)
        return Sample(time=now, qps=traffic.rate / per, cpu=cpu / per, in_flight=traffic.in_flight)

    async def _cpu_percent(self, name: str, cores: float, now: float) -> float:
        """The summed CPU use of the service's ready instances, in percent of one
        instance's cores (divided by the set count by the caller)."""
        state = self._services[name]
        readings: dict[str, tuple[float, float]] = {}
        total = 0.0
        for inst in self.reconciler.instances(name):
            view = inst.view
            if not view.ready or view.drain_since is not None:
                continue
            if view.status != InstanceStatus.RUNNING:
                continue
            seconds = await self.reconciler.runtime.cpu_seconds(view.id)
            if seconds is None:
                continue
            readings[view.id] = (seconds, now)
            previous = state.cpu.get(view.id)
            if previous is not None and now > previous[1]:
                used = max(0.0, seconds - previous[0]) / (now - previous[1])
                total += 100.0 * used / max(cores, 1e-9)
        state.cpu = readings
        return total

    def _apply(self, name: str, steps: list[Change | Note]) -> None:
        for step in steps:
            if isinstance(step, Note):
                self.store.add_event(name, step.reason, step.message)
                continue
            self.store.set_replicas(name, step.replicas, step.reason, step.message)
            log.info(
                "service %s: %s -> %d instance(s): %s",
                name,
                step.reason,
                step.replicas,
                step.message,
            )
            self.reconciler.wake()

    # -- what eascmd desc shows -------------------------------------------------------

    def describe(self, name: str) -> dict[str, Any] | None:
        """The live state of a service's scaling: last sample, decision, cron target."""
        state = self._services.get(name)
        if state is None:
            return None
        out: dict[str, Any] = {}
        if state.sample is not None:
            s = state.sample
            out["metrics"] = {
                "qps": round(s.qps, 3),
                "cpu": round(s.cpu, 1),
                "inFlight": s.in_flight,
            }
        if state.decision is not None:
            d = state.decision
            out["lastDecision"] = {
                "time": _iso(state.decided_at),
                "current": d.current,
                "desired": d.desired,
                "recommendation": d.recommendation,
                "window": d.window.value if isinstance(d.window, Window) else None,
                "bounds": [d.floor, d.ceiling],
                "reason": d.reason,
            }
        if state.cron is not None:
            out["cron"] = {
                "target": state.cron.target,
                "last": _firing_json(state.cron.last),
                "next": _firing_json(state.cron.next),
            }
        return out
