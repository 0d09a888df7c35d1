"""The route watch the gateways follow (``GET /api/v1/gateway/routes``), control-plane side.

The reconciler publishes into a :class:`RouteTable`; the feed turns it into versioned
snapshots for :class:`openeas.gateway.follower.RouteFollower`.  A version is
``EPOCH.N``: ``N`` counts the table's changes and ``EPOCH`` is new per control-plane
start, so a gateway's version from an earlier control plane never matches by chance.

The feed also remembers which version each gateway last acknowledged (a watch with
``since=V`` means that gateway has applied ``V``): a draining instance is stopped only
once every live gateway routes around it (:meth:`caught_up`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

from openeas.gateway.follower import snapshot
from openeas.gateway.routes import RouteTable
from openeas.transport.aio import wait_event

#: Longest watch a gateway may ask for (seconds).
MAX_WATCH = 60.0
#: A gateway not heard from for this long (beyond its watch) no longer holds drains back.
GATEWAY_TTL = 5.0
#: At most this many gateways are remembered (the oldest is forgotten beyond).
MAX_GATEWAYS = 1024


@dataclass
class _Gateway:
    acked: int
    seen: float
    #: the end of its current watch (it is alive at least until then)
    watching_until: float


class RouteFeed:
    def __init__(self, routes: RouteTable) -> None:
        self.routes = routes
        self.epoch = secrets.token_hex(4)
        #: False until the reconciler's first pass published every service: before, a
        #: snapshot would miss services and gateways would answer 404 for them
        self.ready = False
        self._changed = asyncio.Event()
        self._gateways: dict[str, _Gateway] = {}
        routes.listeners.append(self._on_change)

    @property
    def version(self) -> str:
        return f"{self.epoch}.{self.routes.version}"

    def _on_change(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def close(self) -> None:
        """Answer every waiting watch now (a stopping API would wait for them); later
        watches get 503, as before the first pass."""
        self.ready = False
        self._on_change()

    def _acked(self, since: str) -> int:
        epoch, _, n = since.partition(".")
        return int(n) if epoch == self.epoch and n.isdigit() else -1

    def _remember(self, gateway: str, since: str, timeout: float) -> None:
        now = time.monotonic()
        if gateway not in self._gateways and len(self._gateways) >= MAX_GATEWAYS:
            oldest = min(self._gateways, key=lambda g: self._gateways[g].seen)
            del self._gateways[oldest]
        self._gateways[gateway] = _Gateway(self._acked(since), now, now + timeout)

    async def watch(self, since: str, timeout: float, gateway: str) -> dict[str, Any]:
        """The snapshot, once it differs from ``since`` or ``timeout`` seconds passed."""
        timeout = min(max(timeout, 0.0), MAX_WATCH)
        self._remember(gateway, since, timeout)
        if since == self.version:
            await wait_event(self._changed, timeout)
        self._gateways[gateway].seen = time.monotonic()
        return snapshot(self.routes, self.version)

    def caught_up(self) -> bool:
        """Every gateway heard from lately has applied the table's current version."""
        now = time.monotonic()
        current = self.routes.version
        return all(
            g.acked >= current
            for g in self._gateways.values()
            if max(g.seen, g.watching_until) + GATEWAY_TTL > now
        )
