"""Per-service Prometheus metrics and the access log of the gateway.

The hot path only adds to plain dictionaries (one lookup and an increment per request,
on the gateway's event loop); a :class:`~prometheus_client.registry.Collector` turns
them into Prometheus families when the registry is scraped.  In-flight and queue
lengths are read from the live per-service state at that moment.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

#: One line per request: service, method, path, status, latency, instance, bytes.
access_log = logging.getLogger("openeas.gateway.access")

#: Upper bounds (seconds) of the latency histogram's buckets (+Inf is added).
BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
)  # fmt: skip


class _Latency:
    """One histogram series: per-bucket counts (not cumulative), sum and count."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.total = 0.0


class GatewayMetrics:
    """The gateway's metrics in their own registry (served by the control plane)."""

    def __init__(self, states: Callable[[], Iterable[Any]]) -> None:
        self._states = states
        #: (service, protocol, code) -> answered requests
        self.requests: dict[tuple[str, str, str], int] = {}
        #: (service, protocol) -> latency histogram
        self.latency: dict[tuple[str, str], _Latency] = {}
        #: (service, instance) -> requests sent to the instance
        self.sent_to: dict[tuple[str, str], int] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))

    def observe(self, service: str, protocol: str, code: str, seconds: float) -> None:
        """Count one answered request and its latency."""
        key = (service, protocol, code)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        series = self.latency.get((service, protocol))
        if series is None:
            series = self.latency[(service, protocol)] = _Latency()
        series.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        series.total += seconds

    def sent(self, service: str, instance: str) -> None:
        """Count one request sent to an instance."""
        key = (service, instance)
        self.sent_to[key] = self.sent_to.get(key, 0) + 1

    def states(self) -> list[Any]:
        return list(self._states())


class _Collector(Collector):
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        metrics = self._metrics
        requests = CounterMetricFamily(
            "openeas_gateway_requests",
            "Requests answered by the gateway, by service, protocol and status code",
            labels=["service", "protocol", "code"],
        )
        for (service, protocol, code), count in list(metrics.requests.items()):
            requests.add_metric([service, protocol, code], count)
        yield requests
        latency = HistogramMetricFamily(
            "openeas_gateway_request_duration_seconds",
            "Time from a complete request to its answer, as seen by the gateway",
            labels=["service", "protocol"],
        )
        bounds = [*(repr(b) for b in BUCKETS), "+Inf"]
        for (service, protocol), series in list(metrics.latency.items()):
            cumulative, running = [], 0
            for bound, count in zip(bounds, list(series.buckets), strict=True):
                running += count
                cumulative.append((bound, running))
            latency.add_metric([service, protocol], cumulative, series.total)
        yield latency
        sent = CounterMetricFamily(
            "openeas_gateway_instance_requests",
            "Requests sent to each instance",
            labels=["service", "instance"],
        )
        for (service, instance), count in list(metrics.sent_to.items()):
            sent.add_metric([service, instance], count)
        yield sent
        in_flight = GaugeMetricFamily(
            "openeas_gateway_in_flight_requests",
            "Requests accepted by the gateway and not yet answered (queued included)",
            labels=["service"],
        )
        queued = GaugeMetricFamily(
            "openeas_gateway_queue_length",
            "Requests waiting in the gateway for a free instance",
            labels=["service"],
        )
        for state in metrics.states():
            in_flight.add_metric([state.name], state.in_flight)
            queued.add_metric([state.name], len(state.waiters))
        yield in_flight
        yield queued
