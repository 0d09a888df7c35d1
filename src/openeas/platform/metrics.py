"""Prometheus metrics of the control plane, read from its state on each scrape."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from openeas.platform.store import Store


class PlatformCollector(Collector):
    """Services by status, instances by service and status, restarts per instance."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        services = GaugeMetricFamily(
            "openeas_platform_services", "Services by status", labels=["status"]
        )
        for status, count in sorted(Counter(s.status for s in self.store.services()).items()):
            services.add_metric([str(status)], count)
        instances = GaugeMetricFamily(
            "openeas_platform_instances",
            "Instances by service and status",
            labels=["service", "status"],
        )
        restarts = GaugeMetricFamily(
            "openeas_platform_instance_restarts",
            "Restarts of each instance",
            labels=["service", "instance"],
        )
        recs = self.store.instances()
        for (service, instance_status), count in sorted(
            Counter((i.service, i.status) for i in recs).items()
        ):
            instances.add_metric([service, str(instance_status)], count)
        for inst in recs:
            restarts.add_metric([inst.service, inst.id], inst.restarts)
        yield services
        yield instances
        yield restarts


def platform_registry(store: Store) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PlatformCollector(store))
    return registry
