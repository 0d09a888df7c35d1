"""The routing table shared by the control plane (writer) and the gateway (reader).

The control plane publishes, per service, its token, its request limits and the instances
that may receive traffic; the gateway looks services up per request and keeps the live
per-instance load (outstanding requests) here too, so that the control plane can wait for
a draining instance to finish its in-flight requests before stopping it.

Everything runs on one event loop: no locks are needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Upstream:
    """One processor instance of a service."""

    instance_id: str
    host: str
    http_port: int
    grpc_port: int | None = None
    #: the instance's ``--http-unix-socket`` when it runs on this machine: HTTP goes
    #: there (cheaper than loopback TCP), falling back to ``host:http_port``
    unix_socket: str | None = None
    #: the instance's internal token, sent with every request (see
    #: :mod:`openeas.protocol.instance_token`); None for an instance that needs none
    token: str | None = field(default=None, repr=False)


#: Requests the gateway sends one instance at once when the service sets no
#: ``rpc.worker_threads`` (enough to pipeline 16 deep to a fast instance).
DEFAULT_MAX_CONCURRENCY = 32


@dataclass(frozen=True)
class ServiceLimits:
    """The service's ``metadata.rpc`` settings that the gateway enforces."""

    #: Milliseconds a request may take (queue wait + receive + processing); 408 after.
    keepalive_ms: int = 5000
    #: Requests that may wait for an instance; 450 beyond it.
    max_queue_size: int = 64
    #: Queries per second; 429 beyond it (None: unlimited).
    rate_limit: float | None = None
    #: Requests the gateway sends one instance at once; more wait in the gateway's queue
    #: (bounded by ``max_queue_size``) for the first instance with a free slot.  The
    #: platform sets it to the service's ``rpc.worker_threads`` when the spec has one.
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY


@dataclass(frozen=True)
class ServiceRoute:
    """What the gateway needs to know about one service."""

    name: str
    token: str
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    #: Ready instances that take new requests.
    upstreams: tuple[Upstream, ...] = ()
    #: Instances being drained: no new requests, in-flight ones finish.
    draining: tuple[Upstream, ...] = ()
    #: Hold requests while the service has no ready instance (it is scaled to zero and
    #: one is starting): they wait in the service's queue, bounded by ``rpc.keepalive``
    #: and ``rpc.max_queue_size``, instead of a 503.
    hold: bool = False


@dataclass(frozen=True)
class GroupMember:
    """A service of a group, with its share of the group's traffic."""

    service: str
    #: relative to the other members' weights (the control plane computes it: the
    #: member's ready instances in TrafficMode ``auto``, its Weight in ``customized``);
    #: 0 or a standalone member: none of the group's traffic
    weight: int


@dataclass(frozen=True)
class GroupRoute:
    """A service group's endpoint (EAS): its own token; each request goes to one member
    service, chosen by weight, and is then served as a request to that service."""

    name: str
    token: str
    members: tuple[GroupMember, ...] = ()


class RouteTable:
    """Services and service groups by name, plus the in-flight request count of every
    instance.  A group's name is never a service's name (the control plane sees to it)."""

    def __init__(self) -> None:
        self._routes: dict[str, ServiceRoute] = {}
        self._groups: dict[str, GroupRoute] = {}
        self._in_flight: dict[str, int] = {}
        self.version = 0
        #: called after every change (the control plane wakes its route watchers)
        self.listeners: list[Callable[[], None]] = []

    # -- written by the control plane -------------------------------------------------

    def update(self, route: ServiceRoute) -> None:
        """Publish (or replace) a service's route."""
        self._routes[route.name] = route
        self._changed()

    def remove(self, name: str) -> None:
        """Stop routing to a service (unknown names are ignored)."""
        if self._routes.pop(name, None) is not None:
            self._changed()

    def update_group(self, group: GroupRoute) -> None:
        """Publish (or replace) a service group's route."""
        self._groups[group.name] = group
        self._changed()

    def remove_group(self, name: str) -> None:
        """Stop routing to a group (unknown names are ignored)."""
        if self._groups.pop(name, None) is not None:
            self._changed()

    def _changed(self) -> None:
        self.version += 1
        for listener in self.listeners:
            listener()

    def in_flight(self, instance_id: str) -> int:
        """Requests the gateway has sent to this instance and not yet finished."""
        return self._in_flight.get(instance_id, 0)

    # -- read by the gateway ----------------------------------------------------------

    def get(self, name: str) -> ServiceRoute | None:
        return self._routes.get(name)

    def services(self) -> Iterable[ServiceRoute]:
        return self._routes.values()

    def group(self, name: str) -> GroupRoute | None:
        return self._groups.get(name)

    def groups(self) -> Iterable[GroupRoute]:
        return self._groups.values()

    def acquire(self, instance_id: str) -> None:
        """Count a request sent to an instance (pair with :meth:`release`)."""
        self._in_flight[instance_id] = self._in_flight.get(instance_id, 0) + 1

    def release(self, instance_id: str) -> None:
        left = self._in_flight.get(instance_id, 0) - 1
        if left > 0:
            self._in_flight[instance_id] = left
        else:
            self._in_flight.pop(instance_id, None)
