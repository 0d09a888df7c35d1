"""The autoscaling policy: a pure function from metrics, spec and time to an instance count.

:func:`decide` is modelled on Kubernetes' HPA (which EAS follows) and on Ray Serve's
``calculate_desired_num_replicas``: no clock, no I/O, no state of its own.  The caller
(the reconciler) keeps a :class:`MetricsHistory` per service and the
:class:`Recommendations` the previous decision returned, and passes ``now`` on one clock
(``time.monotonic()``) used for the samples too.  A new or changed autoscaler starts
again from an empty ``Recommendations()``.

The rules, in the order :func:`decide` applies them:

1. **Bounds.**  ``floor = max(min, cron target)``, ``ceiling = max(max, cron target)``: a
   scheduled target is a floor the metrics cannot scale below, and it may exceed ``max``
   (see :func:`bounds`).  While instances run, metric-driven scaling never goes below 1.
2. **From zero** (``current == 0``): a request waiting at the gateway (``in_flight > 0``)
   or any traffic starts ``max(scaleUpActivationReplicas, floor)`` instances at once, with
   no window: the request is being held.  Without traffic the service stays at ``floor``.
3. **To zero**: with ``floor == 0`` and no traffic for ``scaleDownGracePeriodSeconds``
   (counted from the last sample with traffic, or from the first sample) -> 0.
4. **Per strategy**: ``ratio = metric / threshold``;
   ``replicas = current`` when ``|ratio - 1| <= 0.1`` (the tolerance band), else
   ``ceil(current * ratio)``.  The largest over the strategies is this round's
   recommendation.
5. **Stabilization** (HPA): scaling up goes to the *lowest* recommendation made within
   the last ``scaleUp.stabilizationWindowSeconds``, scaling down to the *highest* within
   the last ``scaleDown.stabilizationWindowSeconds``; until recommendations span a window
   (just after the autoscaler started), the current count counts as one of them, so a
   change needs the metric to hold for the whole window.
6. **Clamp** the result to ``[max(floor, 1), ceiling]``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum

from openeas.platform.elastic.autoscaler import AutoscalerSpec, Behavior, MetricName

#: The tolerance band: within 10% of a threshold nothing changes (EAS, HPA).
TOLERANCE = 0.1
#: Samples kept per service by default (a few minutes at a sample every second or two).
DEFAULT_HISTORY = 256
#: Recommendations kept at most (runs of equal values are merged, see Recommendations).
MAX_RECOMMENDATIONS = 4096


@dataclass(frozen=True)
class Sample:
    """One observation of a service at ``time`` (seconds, the caller's clock)."""

    time: float
    #: requests per second per ready instance (the service's rate when none is ready)
    qps: float = 0.0
    #: CPU use per instance in percent of its cores, averaged over ready instances
    cpu: float = 0.0
    #: requests in flight at the gateway, including those held while scaling from zero
    in_flight: int = 0

    @property
    def has_traffic(self) -> bool:
        return self.qps > 0 or self.in_flight > 0

    def value(self, metric: MetricName) -> float:
        return self.qps if metric is MetricName.QPS else self.cpu


@dataclass(frozen=True)
class Metrics:
    """What :func:`decide` reads of a service's history."""

    #: recent samples, oldest first
    samples: tuple[Sample, ...] = ()
    #: time of the first sample ever taken (idle time counts from here without traffic)
    since: float | None = None
    #: time of the last sample with traffic
    last_traffic: float | None = None

    @property
    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def idle_for(self, now: float) -> float:
        """Seconds without traffic (0 when nothing was sampled yet)."""
        start = self.last_traffic if self.last_traffic is not None else self.since
        return 0.0 if start is None else max(0.0, now - start)


class MetricsHistory:
    """A bounded ring of samples per service, fed by the reconciler (no clock, no I/O)."""

    def __init__(self, capacity: int = DEFAULT_HISTORY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._rings: dict[str, deque[Sample]] = {}
        self._since: dict[str, float] = {}
        self._last_traffic: dict[str, float] = {}

    def add(self, service: str, sample: Sample) -> None:
        """Record ``sample``; one older than the service's latest is a caller's bug."""
        ring = self._rings.setdefault(service, deque(maxlen=self.capacity))
        if ring and sample.time < ring[-1].time:
            raise ValueError(f"sample at {sample.time} is older than the latest {ring[-1].time}")
        ring.append(sample)
        self._since.setdefault(service, sample.time)
        if sample.has_traffic:
            self._last_traffic[service] = sample.time

    def metrics(self, service: str) -> Metrics:
        return Metrics(
            tuple(self._rings.get(service, ())),
            self._since.get(service),
            self._last_traffic.get(service),
        )

    def forget(self, service: str) -> None:
        """Drop a deleted service's samples."""
        for table in (self._rings, self._since, self._last_traffic):
            table.pop(service, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._rings)


@dataclass(frozen=True)
class Recommendation:
    """This round's metric recommendation; ``time`` is the end of a run of equal ones."""

    time: float
    replicas: int


@dataclass(frozen=True)
class Recommendations:
    """Past recommendations, the policy's only state: each decision returns the next one.

    A run of equal recommendations is kept as its last one: a window's lowest or
    highest value is unchanged by that, and the history stays small at any decision rate.
    """

    entries: tuple[Recommendation, ...] = ()
    #: when the first recommendation was made (does the history span a window?)
    since: float | None = None

    def add(self, now: float, replicas: int, horizon: float) -> Recommendations:
        """With ``replicas`` recorded at ``now``, dropping runs that ended before
        ``now - horizon``."""
        entries = list(self.entries)
        if entries and entries[-1].replicas == replicas:
            entries.pop()
        entries.append(Recommendation(now, replicas))
        kept = [r for r in entries if r.time >= now - horizon][-MAX_RECOMMENDATIONS:]
        return Recommendations(tuple(kept), self.since if self.since is not None else now)

    def within(self, now: float, window: float) -> list[int]:
        return [r.replicas for r in self.entries if r.time >= now - window]

    def spans(self, now: float, window: float) -> bool:
        return self.since is not None and self.since <= now - window


class Window(StrEnum):
    """The window or rule that shaped a decision."""

    SCALE_UP = "scaleUp"
    SCALE_DOWN = "scaleDown"
    #: ``onZero.scaleDownGracePeriodSeconds`` (to zero)
    ON_ZERO = "onZero"
    #: ``onZero.scaleUpActivationReplicas`` (from zero)
    ACTIVATION = "activation"


@dataclass(frozen=True)
class StrategyResult:
    """One strategy's reading and what it recommends."""

    metric: MetricName
    value: float
    threshold: float
    replicas: int
    #: within the tolerance band (so ``replicas`` is the current count)
    tolerated: bool

    def describe(self) -> str:
        unit = "%" if self.metric is MetricName.CPU else "/instance"
        band = ", within 10%" if self.tolerated else ""
        return (
            f"{self.metric.value} {self.value:g}{unit} "
            f"(threshold {self.threshold:g}{band}) -> {self.replicas}"
        )


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` concluded, with everything an event needs to explain it."""

    current: int
    desired: int
    #: this round's recommendation (largest over strategies), before windows and bounds
    recommendation: int | None
    strategies: tuple[StrategyResult, ...]
    window: Window | None
    floor: int
    ceiling: int
    reason: str
    #: pass to the next call of :func:`decide`
    recommendations: Recommendations = field(default_factory=Recommendations)

    @property
    def changed(self) -> bool:
        return self.desired != self.current


def bounds(spec: AutoscalerSpec, cron_target: int | None = None) -> tuple[int, int]:
    """``(floor, ceiling)``: ``[min, max]`` with a scheduled target as a floor.

    The cron target raises the floor (the autoscaler may still add instances above it
    when the metrics ask for more) and, when above ``max``, the ceiling too: a scheduled
    scale-out is an explicit instruction for that time.  A target below ``min`` changes
    nothing: ``min`` stays the floor.  This is ACK's CronHPA-with-HPA rule, which EAS's
    "scheduled scaling adjusts the autoscaler's min and max" describes.
    """
    if cron_target is None:
        return spec.min, spec.max
    return max(spec.min, cron_target), max(spec.max, cron_target)


def decide(
    spec: AutoscalerSpec,
    current: int,
    metrics: Metrics,
    recommendations: Recommendations,
    now: float,
    cron_target: int | None = None,
) -> Decision:
    """The desired instance count for a service set to ``current`` instances now.

    ``current`` is the count the service is set to (what the reconciler drives towards),
    not only the ready ones; the sample's ``qps`` is per ready instance.  See the module
    docstring for the rules.
    """
    floor, ceiling = bounds(spec, cron_target)
    base = Decision(current, current, None, (), None, floor, ceiling, "", recommendations)
    latest = metrics.latest
    if current == 0:
        return _from_zero(spec.behavior, base, latest)
    if latest is None:
        held = replace(base, desired=_clamp(current, max(floor, 1), ceiling))
        return replace(held, reason=f"no metrics yet; {_bounds_text(held)}")
    if floor == 0 and metrics.idle_for(now) >= spec.behavior.scale_down_grace:
        grace = spec.behavior.scale_down_grace
        reason = (
            f"no traffic for {metrics.idle_for(now):g}s (onZero grace {grace}s): {current} -> 0"
        )
        return replace(base, desired=0, window=Window.ON_ZERO, reason=reason)
    return _scale(spec, base, latest, now)


def _from_zero(behavior: Behavior, base: Decision, latest: Sample | None) -> Decision:
    if latest is not None and latest.has_traffic:
        desired = _clamp(max(behavior.activation_replicas, base.floor), 1, base.ceiling)
        reason = (
            f"{latest.in_flight} request(s) waiting at zero instances: activating {desired} "
            f"(scaleUpActivationReplicas {behavior.activation_replicas})"
        )
        return replace(base, desired=desired, window=Window.ACTIVATION, reason=reason)
    if base.floor > 0:
        return replace(base, desired=base.floor, reason=f"at 0, below the floor {base.floor}")
    return replace(base, reason="at 0 instances, no traffic")


def _scale(spec: AutoscalerSpec, base: Decision, latest: Sample, now: float) -> Decision:
    current = base.current
    results = tuple(_strategy(current, s.metric, s.threshold, latest) for s in spec.strategies)
    recommendation = max(r.replicas for r in results)
    b = spec.behavior
    history = base.recommendations.add(
        now, recommendation, max(b.scale_up_window, b.scale_down_window)
    )
    stabilized, window, window_text = _stabilize(b, current, recommendation, history, now)
    desired = _clamp(stabilized, max(base.floor, 1), base.ceiling)
    parts = [*(r.describe() for r in results), f"recommendation {recommendation}"]
    if window_text:
        parts.append(window_text)
    if desired != stabilized:
        parts.append(f"clamped to [{max(base.floor, 1)}, {base.ceiling}]")
    parts.append(f"{current} -> {desired}")
    return replace(
        base,
        desired=desired,
        recommendation=recommendation,
        strategies=results,
        window=window,
        reason="; ".join(parts),
        recommendations=history,
    )


def _strategy(current: int, metric: MetricName, threshold: float, sample: Sample) -> StrategyResult:
    value = sample.value(metric)
    ratio = value / threshold
    # The epsilon keeps exactly 10% off (11 for a threshold of 10) inside the band.
    if abs(ratio - 1.0) <= TOLERANCE + 1e-9:
        return StrategyResult(metric, value, threshold, current, True)
    # The epsilon keeps float noise (2 * 1.5000000001) from adding an instance.
    replicas = math.ceil(current * ratio - 1e-9)
    return StrategyResult(metric, value, threshold, replicas, False)


def _stabilize(
    behavior: Behavior,
    current: int,
    recommendation: int,
    history: Recommendations,
    now: float,
) -> tuple[int, Window | None, str]:
    """HPA's stabilization: up to the lowest recommendation within the up-window, down
    to the highest within the down-window (the current count stands in for the part of
    a window before the first recommendation)."""
    if recommendation > current:
        seconds = behavior.scale_up_window
        values = history.within(now, seconds)
        if not history.spans(now, seconds):
            values.append(current)
        value, window, word = min(values), Window.SCALE_UP, "lowest"
        target = max(current, value)
    elif recommendation < current:
        seconds = behavior.scale_down_window
        values = history.within(now, seconds)
        if not history.spans(now, seconds):
            values.append(current)
        value, window, word = max(values), Window.SCALE_DOWN, "highest"
        target = min(current, value)
    else:
        return current, None, ""
    return target, window, f"{window.value} window {seconds}s: {word} recommendation {value}"


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _bounds_text(decision: Decision) -> str:
    return f"{decision.current} -> {decision.desired} within [{decision.floor}, {decision.ceiling}]"
