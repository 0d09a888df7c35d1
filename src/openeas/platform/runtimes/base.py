"""The runtime contract: everything the reconciler needs to run instances somewhere.

A runtime starts an instance and says where it answers (:class:`Address`: it chooses the
node and the ports), watches it (:meth:`Runtime.poll`: how it ended, including a kill for
exceeding its limits), asks it whether it is ready (:meth:`Runtime.probe`), reads its log,
and stops it.  The reconciler never opens a socket, reads a pid or touches a file of an
instance itself, so a runtime whose instances run on other machines (Ray actors,
Kubernetes pods) implements the same calls.  :class:`~.local.LocalRuntime` runs processes
on this machine; ``openeas.testing.fake_runtime.FakeRuntime`` runs nothing (tests).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from openeas.platform.resources import ResourceGroup
from openeas.platform.spec import DEFAULT_RESOURCE


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one processor instance (the runtime adds addresses)."""

    instance_id: str
    service: str
    #: processor flags (repository already resolved), without ports/addresses
    processor_params: list[str]
    #: host cores to pin it to (empty: no pinning)
    cpus: list[int] = field(default_factory=list)
    cpu_count: int = 1
    #: resident memory limit in MB (0: none)
    memory_mb: int = 0
    gpus: list[int] = field(default_factory=list)
    #: GPUs wanted (a runtime that places instances itself picks the devices)
    gpu_count: int = 0
    #: the resource group it runs in (``metadata.resource``)
    resource: str = DEFAULT_RESOURCE
    #: the token the instance must require on every request (empty: none)
    internal_token: str = field(default="", repr=False)


@dataclass(frozen=True)
class Address:
    """Where a started instance answers, as its runtime chose it."""

    host: str
    http_port: int
    grpc_port: int
    metrics_port: int = 0
    #: a Unix-domain socket it also serves HTTP on (the gateway prefers it: same machine)
    unix_socket: str | None = None
    #: the runtime's node id ('' for the local runtime: this machine)
    node: str = ""
    #: the process id on its node, when the runtime knows one (shown by eascmd)
    pid: int | None = None


@dataclass(frozen=True)
class Exit:
    """How an instance ended, when the runtime knows."""

    code: int | None
    #: a short human reason, e.g. "OOMKilled: ..." or "exited with status 1"
    reason: str


class StartError(Exception):
    """The runtime could not start an instance; the message says why."""


class Runtime(ABC):
    @abstractmethod
    async def start(self, launch: Launch) -> Address:
        """Start the instance; where it will answer (it is not ready yet).
        :class:`StartError` when it cannot be started."""

    @abstractmethod
    def adopt(self, launch: Launch, address: Address) -> bool:
        """Take over an instance started by an earlier control plane at ``address``;
        False when it is gone."""

    @abstractmethod
    def poll(self, instance_id: str) -> Exit | None:
        """Watch a started instance: enforce the limits its platform does not enforce for
        us (then report the kill), and say how it ended; None while it runs."""

    @abstractmethod
    async def probe(self, instance_id: str) -> bool:
        """True when the instance answers ready (Triton's ``/v2/health/ready``)."""

    async def in_flight(self, instance_id: str) -> int:
        """Requests the instance has accepted and not answered yet (queued or executing),
        asked while it drains; 0 when it cannot tell (the drain then relies on the
        gateways having routed around it)."""
        return 0

    async def cpu_seconds(self, instance_id: str) -> float | None:
        """CPU time (user + system seconds) the instance has used since it started, its
        helper processes (e.g. Python backend stubs) included; None when the runtime
        cannot tell or the instance is gone.  The autoscaler's ``cpu`` metric is its
        growth per second over the instance's cores."""
        return None

    @abstractmethod
    def read_log(
        self, service: str, instance_id: str, *, tail: int | None = None, offset: int | None = None
    ) -> tuple[str, int]:
        """An instance's log: all of it, its last ``tail`` lines, or what follows byte
        ``offset``; with the offset reached (for following).  ``("", 0)`` when none."""

    @abstractmethod
    async def stop(self, instance_id: str, timeout: float) -> None:
        """Stop gracefully (SIGTERM), forcefully after ``timeout`` seconds."""

    @abstractmethod
    def forget(self, instance_id: str) -> None:
        """Drop bookkeeping for an instance that has ended."""

    def resource_groups(self) -> list[ResourceGroup] | None:
        """The groups the runtime's machines form (a cluster's nodes); None: the runtime
        has none of its own and the platform's declared group holds."""
        return None

    def stop_orphans(self, known: set[str]) -> list[str]:
        """After adoption: stop the instances the runtime still runs that are not in
        ``known`` (their service was deleted while no control plane ran); their ids."""
        return []

    async def close(self) -> None:
        """Release what the runtime holds (clients, connections); instances keep running."""
        return None
