"""A runtime that runs nothing, for reconciler tests without processes.

:class:`FakeRuntime` implements :class:`~openeas.platform.runtimes.base.Runtime` with
instances that exist only as entries in a dict (compare Ray Serve's
``MockReplicaActorWrapper``).  A test tells it what happens to them: :meth:`make_ready`,
:meth:`crash`, :meth:`hang` (never ready), :meth:`refuse_starts` (the runtime cannot place
an instance: a start fails with the given reason), :meth:`vanish` (gone while the control
plane was away), :meth:`set_pending` (requests in flight on it),
:meth:`set_cpu_seconds` (the CPU time it has used).  Every call the reconciler makes is recorded in :attr:`calls`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from openeas.platform.runtimes.base import Address, Exit, Launch, Runtime, StartError


@dataclass
class FakeInstance:
    launch: Launch
    address: Address
    ready: bool = False
    #: set by crash(): reported once by poll()
    exit: Exit | None = None
    stopped: bool = False
    #: its log lines
    log: list[str] = field(default_factory=list)
    #: requests it has accepted and not answered (what in_flight() reports)
    pending: int = 0
    #: CPU seconds used (what cpu_seconds() reports; None: unknown)
    cpu: float | None = None


class FakeRuntime(Runtime):
    def __init__(self, *, auto_ready: bool = False, node: str = "fake-node") -> None:
        #: new instances answer ready at once (else a test calls make_ready)
        self.auto_ready = auto_ready
        self.node = node
        self.instances: dict[str, FakeInstance] = {}
        #: (method, instance id) of every call, in order
        self.calls: list[tuple[str, str]] = []
        self._refusal: str | None = None
        self._next_port = 20000
        self._next_pid = 1000

    # -- what a test tells it ---------------------------------------------------------

    def make_ready(self, instance_id: str, ready: bool = True) -> None:
        self.instances[instance_id].ready = ready

    def crash(self, instance_id: str, reason: str = "exited with status 1", code: int = 1) -> None:
        inst = self.instances[instance_id]
        inst.ready = False
        inst.exit = Exit(code, reason)
        inst.log.append(f"fatal: {reason}")

    def set_pending(self, instance_id: str, count: int) -> None:
        """The requests the instance reports queued or executing."""
        self.instances[instance_id].pending = count

    def set_cpu_seconds(self, instance_id: str, seconds: float | None) -> None:
        """The CPU time the instance reports having used (cumulative)."""
        self.instances[instance_id].cpu = seconds

    def hang(self, instance_id: str) -> None:
        """Runs, never answers ready."""
        self.instances[instance_id].ready = False

    def refuse_starts(self, reason: str | None) -> None:
        """Fail every start with ``reason`` (None: start again)."""
        self._refusal = reason

    def vanish(self, instance_id: str) -> None:
        """Gone without a trace (its node died while the control plane was away)."""
        self.instances.pop(instance_id, None)

    def running(self) -> list[str]:
        """Instances started and neither ended nor stopped."""
        return [i for i, f in self.instances.items() if f.exit is None and not f.stopped]

    # -- the runtime contract ---------------------------------------------------------

    async def start(self, launch: Launch) -> Address:
        self.calls.append(("start", launch.instance_id))
        if self._refusal is not None:
            raise StartError(self._refusal)
        self._next_port += 3
        self._next_pid += 1
        address = Address(
            "10.0.0.1",
            self._next_port,
            self._next_port + 1,
            self._next_port + 2,
            node=self.node,
            pid=self._next_pid,
        )
        self.instances[launch.instance_id] = FakeInstance(
            launch, address, ready=self.auto_ready, log=[f"started {launch.instance_id}"]
        )
        return address

    def adopt(self, launch: Launch, address: Address) -> bool:
        self.calls.append(("adopt", launch.instance_id))
        inst = self.instances.get(launch.instance_id)
        return inst is not None and inst.exit is None and not inst.stopped

    def poll(self, instance_id: str) -> Exit | None:
        inst = self.instances.get(instance_id)
        if inst is None:
            return Exit(None, "instance is gone")
        if inst.stopped:
            return Exit(0, "stopped")
        return inst.exit

    async def probe(self, instance_id: str) -> bool:
        inst = self.instances.get(instance_id)
        return inst is not None and inst.ready and inst.exit is None and not inst.stopped

    async def in_flight(self, instance_id: str) -> int:
        inst = self.instances.get(instance_id)
        return inst.pending if inst is not None else 0

    async def cpu_seconds(self, instance_id: str) -> float | None:
        inst = self.instances.get(instance_id)
        return inst.cpu if inst is not None and inst.exit is None and not inst.stopped else None

    def read_log(
        self, service: str, instance_id: str, *, tail: int | None = None, offset: int | None = None
    ) -> tuple[str, int]:
        inst = self.instances.get(instance_id)
        lines = inst.log if inst is not None else []
        if tail is not None:
            lines = lines[-tail:] if tail else []
        text = "".join(line + "\n" for line in lines)
        return text, len(text)

    async def stop(self, instance_id: str, timeout: float) -> None:
        self.calls.append(("stop", instance_id))
        inst = self.instances.get(instance_id)
        if inst is not None:
            inst.stopped = True
            inst.ready = False

    def forget(self, instance_id: str) -> None:
        self.calls.append(("forget", instance_id))
        inst = self.instances.get(instance_id)
        if inst is not None and (inst.exit is not None or inst.stopped):
            del self.instances[instance_id]
