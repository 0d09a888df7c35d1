"""What a gateway process reports to the control plane (its counts, no I/O)."""

from __future__ import annotations

import asyncio

from openeas.gateway.core import GatewayCore
from openeas.gateway.reporter import traffic_report
from openeas.gateway.routes import RouteTable, ServiceRoute, Upstream
from openeas.platform.traffic import parse_report

UPS = tuple(Upstream(f"i{n}", "127.0.0.1", 9000 + n) for n in range(3))


def test_the_report_counts_answers_in_flight_waiting_and_ready_per_service() -> None:
    routes = RouteTable()
    routes.update(ServiceRoute("a", "t", upstreams=UPS[:2], draining=UPS[2:]))
    routes.update(ServiceRoute("cold", "t", hold=True))
    core = GatewayCore(routes)
    for code in ("200", "200", "408"):
        core.metrics.observe("a", "http", code, 0.01)
    core.metrics.observe("a", "grpc", "OK", 0.01)
    core.metrics.observe("gone", "http", "200", 0.01)  # no longer routed: not reported
    for instance in ("i0", "i0", "i2"):  # a draining instance's requests count too
        routes.acquire(instance)
    loop = asyncio.new_event_loop()
    try:
        core.state("cold").waiters.extend(loop.create_future() for _ in range(3))
        doc = traffic_report(core, "gw-1", "boot-1")
    finally:
        loop.close()
    assert doc == {
        "gateway": "gw-1",
        "boot": "boot-1",
        "services": {
            "a": {"answered": 4, "in_flight": 3, "waiting": 0, "ready": 2},
            "cold": {"answered": 0, "in_flight": 0, "waiting": 3, "ready": 0},
        },
    }
    assert parse_report(doc)[0] == "gw-1"  # what the control plane accepts
