"""What the gateways report about each service's traffic, control-plane side.

Every gateway process POSTs a report about once a second (``POST
/api/v1/gateway/traffic``, see :mod:`openeas.gateway.reporter`), and at once when a
request starts waiting for a service that has no instance: per service, the requests it
has answered since it started (a cumulative count), the requests it has sent to
instances and not yet had answered, the requests waiting in its queue, and the ready
instances it routes to.  :class:`TrafficBook` turns those into a per-service
:class:`ServiceTraffic` (request rate, in flight, waiting) summed over the gateways,
which the autoscaler samples.

Pure logic: no I/O, the caller passes the clock.  Memory is bounded: at most
``MAX_GATEWAYS`` gateways (the longest silent is forgotten first), a gateway's services
are those of its last report (at most ``MAX_SERVICES``), and each keeps the points of
the last ``window`` seconds only.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

#: Seconds over which a rate is measured: about two reports, so that a load step shows in
#: full within ~2 s (the autoscaler's stabilization windows are where smoothing belongs).
RATE_WINDOW = 2.0
#: A gateway silent for longer is forgotten (it stopped, or lost the control plane).
GATEWAY_TTL = 10.0
#: At most this many gateways are remembered.
MAX_GATEWAYS = 1024
#: At most this many services per report.
MAX_SERVICES = 4096
#: Points kept per gateway and service beyond the window's (reports at once, at zero).
MAX_POINTS = 64
#: A report's largest body (bytes): 4096 services of about 100 bytes each.
MAX_REPORT_BYTES = 1 << 20

_COUNTS = ("answered", "in_flight", "waiting", "ready")
_MAX_COUNT = 1 << 62


class ReportError(ValueError):
    """A malformed report; the message names the field."""


@dataclass(frozen=True)
class ServiceCounts:
    """One service in one gateway's report."""

    #: requests answered since the gateway process started (cumulative)
    answered: int
    #: requests sent to the service's instances and not answered yet
    in_flight: int
    #: requests waiting in the gateway's queue for an instance
    waiting: int
    #: ready instances the gateway routes to
    ready: int


@dataclass(frozen=True)
class ServiceTraffic:
    """A service's traffic over every live gateway."""

    #: requests per second answered over the last few seconds
    rate: float = 0.0
    #: requests in flight to instances plus those waiting for one
    in_flight: int = 0
    #: requests waiting in a gateway's queue
    waiting: int = 0


def parse_report(doc: Any) -> tuple[str, str, dict[str, ServiceCounts]]:
    """``(gateway, boot, services)`` of a report document; ReportError when malformed.

    ``{"gateway": ID, "boot": TOKEN, "services": {NAME: {"answered": N, "in_flight": N,
    "waiting": N, "ready": N}}}``; ``boot`` is new per gateway process start (its
    counters start again from zero then).
    """
    if not isinstance(doc, dict):
        raise ReportError("the report must be a JSON object")
    gateway, boot, services = doc.get("gateway"), doc.get("boot", ""), doc.get("services")
    if not isinstance(gateway, str) or not 0 < len(gateway) <= 200:
        raise ReportError("gateway: a string of 1 to 200 characters is required")
    if not isinstance(boot, str) or len(boot) > 100:
        raise ReportError("boot: a string of at most 100 characters is required")
    if not isinstance(services, dict):
        raise ReportError("services: an object of service name -> counts is required")
    if len(services) > MAX_SERVICES:
        raise ReportError(f"services: more than {MAX_SERVICES} services in one report")
    return gateway, boot, {name: _counts(name, counts) for name, counts in services.items()}


def _counts(name: str, doc: Any) -> ServiceCounts:
    if len(name) > 200:
        raise ReportError(f"services: a service name longer than 200 characters ({name[:40]}...)")
    if not isinstance(doc, dict):
        raise ReportError(f"services.{name}: an object of counts is required")
    values = []
    for key in _COUNTS:
        value = doc.get(key, 0)
        if type(value) is not int or not 0 <= value < _MAX_COUNT:
            raise ReportError(f"services.{name}.{key}: a non-negative integer is required")
        values.append(value)
    return ServiceCounts(*values)


@dataclass
class _Series:
    """One gateway's counts of one service; ``points`` are (time, answered) with
    ``answered`` made monotonic across the gateway's restarts."""

    last: ServiceCounts
    total: int = 0
    points: collections.deque[tuple[float, int]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_POINTS)
    )

    def rate(self, now: float, window: float) -> float:
        points = self.points
        while len(points) > 2 and points[1][0] <= now - window:
            points.popleft()  # keep one point at or before the window's start as a base
        if len(points) < 2:
            return 0.0
        (t0, n0), (t1, n1) = points[0], points[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def _advance(series: _Series | None, counts: ServiceCounts, now: float, restarted: bool) -> _Series:
    """``series`` (None: a new one) with a report's ``counts`` at ``now``."""
    if series is None:  # the first report: a base point, no rate yet
        series = _Series(counts)
        series.points.append((now, 0))
        return series
    grown = counts.answered - series.last.answered
    if restarted or grown < 0:
        # the gateway's counters started from zero since its last report: what it has
        # counted since is the increase (never a negative or a huge rate)
        grown = counts.answered
    series.total += grown
    series.last = counts
    series.points.append((now, series.total))
    return series


@dataclass
class _Gateway:
    boot: str
    seen: float
    services: dict[str, _Series] = field(default_factory=dict)


class TrafficBook:
    """The gateways' latest reports, and each service's traffic from them."""

    def __init__(
        self,
        on_waiting: Callable[[str], None] | None = None,
        *,
        window: float = RATE_WINDOW,
        ttl: float = GATEWAY_TTL,
    ) -> None:
        #: called with a service's name when a report says requests wait for it while
        #: the gateway has no ready instance of it (the controller wakes at once)
        self.on_waiting = on_waiting
        self.window = window
        self.ttl = ttl
        self._gateways: dict[str, _Gateway] = {}

    def report(self, gateway_id: str, doc: Any, now: float) -> None:
        """Record a gateway's report (the body of ``POST /api/v1/gateway/traffic``, see
        :func:`parse_report`; its ``gateway`` is ``gateway_id``); ReportError, with
        nothing recorded, when it is malformed."""
        if not isinstance(doc, dict):
            raise ReportError("the report must be a JSON object")
        _, boot, services = parse_report({**doc, "gateway": gateway_id})
        self._forget_silent(now)
        gateway = self._gateways.get(gateway_id)
        if gateway is None:
            if len(self._gateways) >= MAX_GATEWAYS:
                oldest = min(self._gateways, key=lambda g: self._gateways[g].seen)
                del self._gateways[oldest]
            gateway = self._gateways[gateway_id] = _Gateway(boot, now)
        restarted = gateway.boot != boot  # its counters started again from zero
        gateway.boot, gateway.seen, old = boot, now, gateway.services
        gateway.services = {
            name: _advance(old.get(name), counts, now, restarted)
            for name, counts in services.items()
        }
        if self.on_waiting is not None:
            for name, counts in services.items():
                if counts.waiting and not counts.ready:
                    self.on_waiting(name)

    def _forget_silent(self, now: float) -> None:
        for gateway_id in [g for g, v in self._gateways.items() if now - v.seen > self.ttl]:
            del self._gateways[gateway_id]

    def _live(self, now: float) -> Iterable[_Gateway]:
        self._forget_silent(now)
        return self._gateways.values()

    def sample(self, service: str, now: float) -> ServiceTraffic:
        """The service's traffic over the gateways heard from within ``ttl`` seconds."""
        rate, in_flight, waiting = 0.0, 0, 0
        for gateway in self._live(now):
            series = gateway.services.get(service)
            if series is None:
                continue
            rate += series.rate(now, self.window)
            in_flight += series.last.in_flight + series.last.waiting
            waiting += series.last.waiting
        return ServiceTraffic(rate, in_flight, waiting)

    def services(self, now: float) -> set[str]:
        """The services some live gateway reports."""
        return {name for gateway in self._live(now) for name in gateway.services}

    def gateways(self, now: float) -> list[str]:
        """The live gateways' ids."""
        self._forget_silent(now)
        return list(self._gateways)
