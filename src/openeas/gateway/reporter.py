"""A gateway process's traffic reports to the control plane (its autoscaler's input).

About once a second, and at once when a request starts waiting for a service that has
no instance (a service scaled to zero: the control plane starts one without waiting for
the next tick), the reporter POSTs per service: the requests this process has answered
since it started (the metrics' counts, so the hot path does no extra work), the
requests in flight to its instances, the requests waiting in its queue, and its ready
instances.  The control plane's :class:`openeas.platform.traffic.TrafficBook` keeps them.

The report names this process (``gateway_id``; each worker of ``--workers`` has its own)
and its start (``boot``, random per process: its counters start from zero again).  It
authenticates like the route watch, with the gateway credential.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Any

from openeas.gateway.core import GatewayCore
from openeas.transport.aio import cancel_and_wait, wait_event

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("openeas.gateway.reporter")

#: The reports' path on the control plane's API.
TRAFFIC_PATH = "/api/v1/gateway/traffic"
#: Seconds between reports.
REPORT_EVERY = 1.0
#: Shortest gap between two reports (a burst of held requests makes one report).
MIN_GAP = 0.05


def traffic_report(core: GatewayCore, gateway_id: str, boot: str) -> dict[str, Any]:
    """The report of every routed service, as :func:`~openeas.platform.traffic.parse_report`
    reads it."""
    answered: dict[str, int] = {}
    for (service, _protocol, _code), count in core.metrics.requests.items():
        answered[service] = answered.get(service, 0) + count
    in_flight = core.routes.in_flight
    services = {}
    for route in core.routes.services():
        state = core.states.get(route.name)
        services[route.name] = {
            "answered": answered.get(route.name, 0),
            "in_flight": sum(in_flight(u.instance_id) for u in (*route.upstreams, *route.draining)),
            "waiting": len(state.waiters) if state is not None else 0,
            "ready": len(route.upstreams),
        }
    return {"gateway": gateway_id, "boot": boot, "services": services}


class TrafficReporter:
    """Reports ``core``'s traffic to the API at ``api`` (see the module doc)."""

    def __init__(
        self,
        core: GatewayCore,
        api: str,
        token: str,
        gateway_id: str,
        *,
        every: float = REPORT_EVERY,
    ) -> None:
        self.core = core
        self.url = api.rstrip("/") + TRAFFIC_PATH
        self.gateway_id = gateway_id
        self.every = every
        self.boot = secrets.token_hex(8)
        self._headers = {"Authorization": f"Bearer {token}"}
        self._now = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        core.on_hold = self.report_now

    def report_now(self, _service: str = "") -> None:
        """Send a report without waiting for the next second."""
        self._now.set()

    def start(self) -> None:
        if self._task is None:
            self._now.set()  # the first report at once: a restarted gateway is known again
            self._task = asyncio.create_task(self._run(), name="traffic-reporter")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        import httpx

        failing = False
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                await wait_event(self._now, self.every)
                self._now.clear()
                try:
                    await self.send(client)
                    if failing:
                        log.info("traffic reports to %s resumed", self.url)
                    failing = False
                except (httpx.HTTPError, ValueError) as exc:
                    if not failing:
                        log.warning("traffic report to %s failed (%s); retrying", self.url, exc)
                    failing = True
                await asyncio.sleep(MIN_GAP)

    async def send(self, client: httpx.AsyncClient) -> None:
        """One report; ValueError when the control plane refuses it."""
        doc = traffic_report(self.core, self.gateway_id, self.boot)
        response = await client.post(self.url, json=doc, headers=self._headers)
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}: {response.text[:200]}")
