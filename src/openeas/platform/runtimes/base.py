"""What the reconciler needs from a runtime: start, watch and stop instances.

The local runtime runs processes on this machine; a distributed one (Kubernetes) would map
the same calls onto pods.  The reconciler never touches processes itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one processor instance."""

    instance_id: str
    service: str
    #: processor flags (repository already resolved), without ports/addresses
    processor_params: list[str]
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    cpus: list[int] = field(default_factory=list)
    cpu_count: int = 1
    memory_mb: int = 0
    gpus: list[int] = field(default_factory=list)
    #: the token the instance must require on every request (empty: none)
    internal_token: str = field(default="", repr=False)


@dataclass(frozen=True)
class Exit:
    """How an instance ended, when the runtime knows."""

    code: int | None
    #: a short human reason, e.g. "OOMKilled: ..." or "exited with status 1"
    reason: str


class Runtime(ABC):
    @abstractmethod
    async def start(self, launch: Launch) -> int:
        """Start the instance; its pid (or another handle number)."""

    @abstractmethod
    def adopt(self, instance_id: str, pid: int) -> bool:
        """Take over an instance started by an earlier control plane; False if gone."""

    @abstractmethod
    def exited(self, instance_id: str) -> Exit | None:
        """None while the instance runs; how it ended otherwise."""

    @abstractmethod
    def enforce_limits(self, instance_id: str, memory_mb: int) -> Exit | None:
        """Apply limits the OS does not enforce for us; the kill reason if it was killed."""

    @abstractmethod
    async def stop(self, instance_id: str, timeout: float) -> None:
        """Stop gracefully (SIGTERM), forcefully after ``timeout`` seconds."""

    @abstractmethod
    def forget(self, instance_id: str) -> None:
        """Drop bookkeeping for an instance that has ended."""

    def unix_socket(self, instance_id: str) -> str | None:
        """The Unix-domain socket an instance also serves HTTP on, if the runtime gives
        it one (the gateway prefers it to TCP: same machine, less kernel time)."""
        return None
