"""A gateway process's routes: followed from the control plane's REST API, kept on disk.

The control plane answers ``GET /api/v1/gateway/routes`` with the whole route table (a
*snapshot*: every service's token, limits, ready and draining instances with their
internal tokens; every service group's token and member services with their weights)
and an opaque ``version``.  With ``?since=VERSION&timeout=SECONDS`` the
answer waits (a long poll) until the table differs from ``VERSION`` or the timeout
passes; either way it is a full snapshot, so a follower never has to merge deltas.  A
control plane that has just started answers 503 until its first reconciliation has
published every service: a follower keeps what it has (never an empty table, never a
404 for a service that exists).

:class:`RouteFollower` applies each snapshot into the gateway's :class:`RouteTable` (the
same object the HTTP and gRPC fronts read per request) and writes it to a file (mode
0600: it holds tokens) that the next start loads before the API answers, so a gateway
that starts while the control plane is down serves at once.

The follower authenticates with the gateway credential: ``Authorization: Bearer TOKEN``
(the token is in ``$OPENEAS_HOME/gateway-credential`` on the control plane's machine).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from openeas.gateway.routes import (
    GroupMember,
    GroupRoute,
    RouteTable,
    ServiceLimits,
    ServiceRoute,
    Upstream,
)
from openeas.transport.aio import cancel_and_wait

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("openeas.gateway.follower")

#: The route watch's path on the control plane's API.
ROUTES_PATH = "/api/v1/gateway/routes"
#: Seconds a watch waits for a change before answering the same snapshot.
POLL_TIMEOUT = 30.0
#: Seconds between retries while the control plane does not answer.
RETRY_DELAY = 0.5


# -- the snapshot's JSON ------------------------------------------------------------------


def _upstream_json(u: Upstream) -> dict[str, Any]:
    return {
        "instance_id": u.instance_id,
        "host": u.host,
        "http_port": u.http_port,
        "grpc_port": u.grpc_port,
        "unix_socket": u.unix_socket,
        "token": u.token,
    }


def route_to_json(route: ServiceRoute) -> dict[str, Any]:
    limits = route.limits
    return {
        "name": route.name,
        "token": route.token,
        "limits": {
            "keepalive_ms": limits.keepalive_ms,
            "max_queue_size": limits.max_queue_size,
            "rate_limit": limits.rate_limit,
            "max_concurrency": limits.max_concurrency,
        },
        "upstreams": [_upstream_json(u) for u in route.upstreams],
        "draining": [_upstream_json(u) for u in route.draining],
        "hold": route.hold,
    }


def route_from_json(doc: dict[str, Any]) -> ServiceRoute:
    """The route of one snapshot entry; KeyError/TypeError/ValueError when malformed."""
    return ServiceRoute(
        name=str(doc["name"]),
        token=str(doc["token"]),
        limits=ServiceLimits(**doc["limits"]),
        upstreams=tuple(Upstream(**u) for u in doc["upstreams"]),
        draining=tuple(Upstream(**u) for u in doc["draining"]),
        hold=bool(doc.get("hold", False)),  # absent from snapshots saved before it existed
    )


def group_to_json(group: GroupRoute) -> dict[str, Any]:
    return {
        "name": group.name,
        "token": group.token,
        "members": [{"service": m.service, "weight": m.weight} for m in group.members],
    }


def group_from_json(doc: dict[str, Any]) -> GroupRoute:
    """The service group of one snapshot entry; KeyError/TypeError/ValueError when
    malformed."""
    return GroupRoute(
        name=str(doc["name"]),
        token=str(doc["token"]),
        members=tuple(GroupMember(str(m["service"]), int(m["weight"])) for m in doc["members"]),
    )


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A route snapshot's content: the control plane's version, services and groups."""

    version: str
    services: list[ServiceRoute]
    groups: list[GroupRoute]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Snapshot:
        """KeyError/TypeError/ValueError when malformed."""
        return cls(
            str(doc["version"]),
            [route_from_json(s) for s in doc["services"]],
            # absent from snapshots of control planes before service groups
            [group_from_json(g) for g in doc.get("groups", ())],
        )


def snapshot(routes: RouteTable, version: str) -> dict[str, Any]:
    return {
        "version": version,
        "services": [route_to_json(r) for r in routes.services()],
        "groups": [group_to_json(g) for g in routes.groups()],
    }


def worker_share(route: ServiceRoute, workers: int) -> ServiceRoute:
    """The route as one of ``workers`` gateway processes on the same ports enforces it:
    the service's rate, queue and per-instance concurrency divided among them (rounded
    up), so that together they keep the service's limits."""
    if workers <= 1:
        return route
    limits = route.limits
    shared = dataclasses.replace(
        limits,
        max_queue_size=-(-limits.max_queue_size // workers),
        rate_limit=None if limits.rate_limit is None else limits.rate_limit / workers,
        max_concurrency=-(-limits.max_concurrency // workers),
    )
    return dataclasses.replace(route, limits=shared)


def apply_snapshot(
    table: RouteTable, services: Iterable[ServiceRoute], groups: Iterable[GroupRoute] = ()
) -> None:
    """Make ``table`` hold exactly ``services`` and ``groups`` (unchanged routes are not
    republished: a group keeps its place in the rotation of its members)."""
    _sync(table.services(), services, table.get, table.update, table.remove)
    _sync(table.groups(), groups, table.group, table.update_group, table.remove_group)


_Route = TypeVar("_Route", ServiceRoute, GroupRoute)


def _sync(
    current: Iterable[_Route],
    wanted: Iterable[_Route],
    get: Callable[[str], _Route | None],
    update: Callable[[_Route], None],
    remove: Callable[[str], None],
) -> None:
    """Make one kind of route of a table (``current``) exactly ``wanted``."""
    by_name = {route.name: route for route in wanted}
    for name in [r.name for r in current if r.name not in by_name]:
        remove(name)
    for name, route in by_name.items():
        if get(name) != route:
            update(route)


# -- the file -----------------------------------------------------------------------------


def save_snapshot(path: Path, doc: dict[str, Any]) -> None:
    """Write atomically, owner-only (a reader never sees half a file)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # workers share the file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older temporary file may have had another mode
    with os.fdopen(fd, "w") as handle:
        json.dump(doc, handle)
    os.replace(tmp, path)


def load_snapshot(path: Path) -> Snapshot | None:
    """The saved snapshot; None (logged) when there is none or it is broken."""
    try:
        return Snapshot.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("route snapshot %s unreadable, ignored: %s", path, exc)
        return None


def read_credential(path: Path) -> str:
    """The gateway token in ``path`` (the file the control plane writes: JSON with a
    ``token`` field, or the bare token)."""
    text = path.read_text().strip()
    if text.startswith("{"):
        return str(json.loads(text)["token"])
    return text


# -- the follower -------------------------------------------------------------------------


class RouteFollower:
    """Keeps ``table`` equal to the control plane's route table (see the module doc)."""

    def __init__(
        self,
        table: RouteTable,
        api: str,
        token: str,
        snapshot_path: Path,
        *,
        gateway_id: str | None = None,
        poll_timeout: float = POLL_TIMEOUT,
        workers: int = 1,
    ) -> None:
        self.table = table
        self.api = api.rstrip("/") if "://" in api else f"http://{api.rstrip('/')}"
        self.snapshot_path = snapshot_path
        #: names this gateway to the control plane, which waits for every following
        #: gateway to have applied a route change before it stops a drained instance
        self.gateway_id = gateway_id or socket.gethostname()
        self.poll_timeout = poll_timeout
        #: gateway processes sharing the ports (and the limits: see :func:`worker_share`)
        self.workers = workers
        self.version = ""
        self._headers = {"Authorization": f"Bearer {token}"}
        self._task: asyncio.Task[None] | None = None
        #: set once a snapshot (from the file or the API) is in the table
        self.loaded = asyncio.Event()

    def load(self) -> bool:
        """Fill the table from the saved snapshot; False when there is none."""
        saved = load_snapshot(self.snapshot_path)
        if saved is None:
            return False
        self._apply(saved)
        log.info(
            "routes of %d services and %d service groups loaded from %s",
            len(saved.services), len(saved.groups), self.snapshot_path,
        )  # fmt: skip
        return True

    def _apply(self, snap: Snapshot) -> None:
        """Put a snapshot into the table (each worker process enforces its share of
        every service's limits; groups are the same in every worker)."""
        services = [worker_share(r, self.workers) for r in snap.services]
        apply_snapshot(self.table, services, snap.groups)
        self.version = snap.version
        self.loaded.set()

    def start(self) -> None:
        """Start following (once; later calls do nothing)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="route-follower")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        import httpx  # here: a restarting gateway serves its saved routes before this

        failing = False
        async with httpx.AsyncClient(timeout=self.poll_timeout + 10) as client:
            while True:
                try:
                    await self.poll_once(client)
                    if failing:
                        log.info("route watch on %s resumed", self.api)
                    failing = False
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    if not failing:
                        log.warning("route watch on %s failed (%s); retrying", self.api, exc)
                    failing = True
                    await asyncio.sleep(RETRY_DELAY)

    async def poll_once(self, client: httpx.AsyncClient) -> None:
        """One watch: wait for a change of the table, apply and save the snapshot."""
        params: dict[str, str | float] = {
            "since": self.version,
            "timeout": self.poll_timeout,
            "gateway": self.gateway_id,
        }
        response = await client.get(self.api + ROUTES_PATH, params=params, headers=self._headers)
        if response.status_code == 503:  # a control plane that has not published yet
            await asyncio.sleep(RETRY_DELAY)
            return
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}: {response.text[:200]}")
        doc = response.json()
        if str(doc["version"]) == self.version:
            return
        self._apply(Snapshot.from_json(doc))
        try:
            save_snapshot(self.snapshot_path, doc)
        except OSError as exc:
            log.warning("route snapshot %s not saved: %s", self.snapshot_path, exc)
