"""The Ray runtime: each instance is a detached, named Ray actor that runs ``openeas-server``.

An instance is an actor (namespace :data:`NAMESPACE`, name = the instance id, detached so
it outlives the control plane) that asks Ray for ``num_cpus`` = ``metadata.cpu``,
``memory`` = ``metadata.memory`` MB, ``num_gpus`` = ``metadata.gpu`` and a sliver of its
resource group's custom resource (``openeas_group_<name>``, which the nodes of the group
declare).  Instances are placed with Ray's SPREAD strategy, so a service with 2+ instances
survives the loss of one node.  Ray's resources are logical: the actor runs a
:class:`~.local.LocalRuntime` on its node, which pins the processor to cores, picks free
ports, keeps the log and enforces the memory limit there -- the same code as on one
machine.

On the control plane's side, :class:`RayCluster` makes every Ray call (compare Ray Serve's
``ReplicaActorWrapper``); :class:`RayRuntime` implements the runtime contract on top of it.
A background task asks each actor every :attr:`RayRuntime.watch_interval` seconds how its
process is doing; an actor that died with its node answers with an error at once, so the
loss is seen within a few seconds (reason ``NodeLost: ...``), the reconciler takes the
instance out of the route and restarts it on a surviving node.  A restarted control plane
finds its actors again by name (:meth:`RayRuntime.adopt`) and stops the ones no service
owns any more (:meth:`RayRuntime.stop_orphans`).  docs/cluster.md is the user's guide.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from openeas.home import openeas_home
from openeas.platform.errors import PlatformError
from openeas.platform.resources import ResourceGroup, pick_cores
from openeas.platform.runtimes.base import Address, Exit, Launch, Runtime, StartError
from openeas.platform.runtimes.local import LocalRuntime, probe_ready
from openeas.storage import embedded_s3
from openeas.storage.config import ENDPOINT_ENV

log = logging.getLogger("openeas.platform")

NAMESPACE = "openeas"
#: a node joins resource group ``x`` by declaring the custom resource ``openeas_group_x``
GROUP_PREFIX = "openeas_group_"
#: how much of its group's custom resource each instance takes (a node declares e.g. 1000)
GROUP_UNIT = 0.001
#: the platform's environment variables that instances on other nodes need too
STORAGE_ENV_PREFIX = "OPENEAS_STORAGE_"
#: how long the control plane waits for the embedded S3 server at start-up
STORAGE_START_TIMEOUT = 60.0
#: log lines an actor hands over with its exit (the node may be gone when they are asked)
_EXIT_TAIL = 50


def node_cores(wanted: list[int], count: int) -> list[int]:
    """The cores to pin to on this node: the control plane's pick where this node has
    those cores, else the first ``count`` (the pick was made for another machine)."""
    here = os.sched_getaffinity(0)
    if wanted and all(core in here for core in wanted):
        return wanted
    return pick_cores(count, [])


class InstanceActor:
    """Runs on a node (as a Ray actor): one instance's ``openeas-server``, supervised by a
    :class:`LocalRuntime` there."""

    def __init__(self, logs_dir: str, env: dict[str, str]) -> None:
        import ray

        # The platform's object-store settings (endpoint, credentials): the processor reads
        # its oss:// repositories with them (it inherits this process's environment).
        os.environ.update(env)
        # Logs and files it creates are the platform user's only, as on the local runtime
        # (this worker process is the actor's alone: the mask changes nothing else).
        os.umask(0o077)
        self.node = ray.get_runtime_context().get_node_id()
        # The processor must not outlive its actor (a node stopped with ``ray stop`` or
        # removed must not leave servers behind), and serves TCP only: the gateway is on
        # another machine (a Unix socket is a same-machine shortcut).
        self.runtime = LocalRuntime(
            Path(logs_dir),
            host=ray.util.get_node_ip_address(),
            die_with_parent=True,
            unix_socket=False,
        )
        self.gpus = [int(g) for g in ray.get_gpu_ids()]
        self.launch: Launch | None = None

    async def start(self, launch: Launch) -> Address:
        launch = dataclasses.replace(
            launch, cpus=node_cores(launch.cpus, launch.cpu_count), gpus=self.gpus
        )
        self.launch = launch
        address = await self.runtime.start(launch)
        return dataclasses.replace(address, node=self.node)

    def poll(self) -> tuple[Exit | None, str]:
        """How the process ended (None: running), with its log's last lines then."""
        if self.launch is None:
            return Exit(None, "never started"), ""
        ended = self.runtime.poll(self.launch.instance_id)
        if ended is None:
            return None, ""
        tail, _ = self.read_log(_EXIT_TAIL, None)
        return ended, tail

    async def in_flight(self) -> int:
        """The processor's pending requests (its metrics, read on its node)."""
        if self.launch is None:
            return 0
        return await self.runtime.in_flight(self.launch.instance_id)

    async def cpu_seconds(self) -> float | None:
        if self.launch is None:
            return None
        return await self.runtime.cpu_seconds(self.launch.instance_id)

    def read_log(self, tail: int | None, offset: int | None) -> tuple[str, int]:
        if self.launch is None:
            return "", 0
        return self.runtime.read_log(
            self.launch.service, self.launch.instance_id, tail=tail, offset=offset
        )

    async def stop(self, timeout: float) -> None:
        if self.launch is not None:
            await self.runtime.stop(self.launch.instance_id, timeout)


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (a clear error, not Ray's long retries) when the head does not answer."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise PlatformError(f"cannot reach the Ray cluster at {address!r}: {exc}") from None


class RayCluster:
    """Every call the Ray runtime makes into Ray (one place to read, one place to fake)."""

    def __init__(self, address: str, namespace: str = NAMESPACE) -> None:
        try:
            import ray
        except ImportError:
            raise PlatformError("the Ray runtime needs Ray: pip install 'openeas[ray]'") from None
        self.ray = ray
        self.namespace = namespace
        _reachable(address)
        ray.init(
            address=address,
            namespace=namespace,
            log_to_driver=False,
            logging_level=logging.WARNING,
            ignore_reinit_error=True,
        )

    def nodes(self) -> list[dict[str, Any]]:
        """The live nodes, as ``ray.nodes()`` describes them."""
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def create(self, launch: Launch, logs_dir: Path, env: dict[str, str]) -> Any:
        """The instance's actor (not placed yet); ValueError while its name is taken."""
        options: dict[str, Any] = {
            "name": launch.instance_id,
            "namespace": self.namespace,
            "lifetime": "detached",
            "max_restarts": 0,  # the reconciler restarts it (and records why)
            "num_cpus": launch.cpu_count,
            "num_gpus": launch.gpu_count,
            "resources": {GROUP_PREFIX + launch.resource: GROUP_UNIT},
            "scheduling_strategy": "SPREAD",
        }
        if launch.memory_mb:
            options["memory"] = launch.memory_mb * 2**20
        actor = self.ray.remote(InstanceActor).options(**options)
        return actor.remote(str(logs_dir), env)

    def get(self, instance_id: str) -> Any | None:
        """The actor of a running instance, or None."""
        try:
            return self.ray.get_actor(instance_id, namespace=self.namespace)
        except ValueError:
            return None

    def names(self) -> list[str]:
        """Every named actor in the namespace (each one an instance)."""
        return list(self.ray.util.list_named_actors())

    def call(self, actor: Any, method: str, *args: Any, timeout: float) -> Any:
        """Call an actor's method and wait for its answer (blocking)."""
        return self.ray.get(getattr(actor, method).remote(*args), timeout=timeout)

    async def acall(self, actor: Any, method: str, *args: Any, timeout: float) -> Any:
        """The same, awaited on the event loop."""
        return await asyncio.wait_for(getattr(actor, method).remote(*args), timeout)

    def kill(self, actor: Any) -> None:
        with contextlib.suppress(Exception):  # already dead is fine
            self.ray.kill(actor, no_restart=True)

    def died(self, exc: BaseException) -> bool:
        """True when ``exc`` says the actor is dead for good (not merely unreachable)."""
        errors = self.ray.exceptions
        unavailable = getattr(errors, "ActorUnavailableError", ())
        return isinstance(exc, errors.RayActorError) and not isinstance(exc, unavailable)

    def timed_out(self, exc: BaseException) -> bool:
        """True when ``exc`` is :meth:`call`'s timeout (the actor was never placed)."""
        return isinstance(exc, self.ray.exceptions.GetTimeoutError)

    def task_error(self, exc: BaseException) -> str | None:
        """The message of an exception the actor's method raised (None: another error)."""
        if isinstance(exc, self.ray.exceptions.RayTaskError):
            cause = getattr(exc, "cause", None)
            return str(cause) if cause is not None else str(exc).strip().splitlines()[-1]
        return None

    def node_ip(self) -> str:
        """This machine's address in the cluster (what other nodes reach it at)."""
        return str(self.ray.util.get_node_ip_address())

    def close(self) -> None:
        self.ray.shutdown()  # the detached actors keep running


def storage_env(node_ip: str) -> dict[str, str]:
    """Where instances on any node read ``oss://``/``s3://``: the platform's configured
    ``OPENEAS_STORAGE_*`` endpoint, else the S3 server ``openeas up`` runs on this machine
    (reached at ``node_ip`` when it listens on every interface); {} when neither."""
    env = {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV_PREFIX)}
    if env.get(ENDPOINT_ENV):
        return env
    embedded = embedded_s3.instance_env(openeas_home(), node_ip)
    # The supervisor starts the server beside this process: instances (and `openeas cp`
    # after `openeas up --detach` returns) need it answering first.
    if embedded and not embedded_s3.wait_ready(embedded[ENDPOINT_ENV], STORAGE_START_TIMEOUT):
        log.warning("the embedded S3 server does not answer at %s", embedded[ENDPOINT_ENV])
    return embedded or env


def groups_of(nodes: list[dict[str, Any]]) -> list[ResourceGroup]:
    """The resource groups the nodes declare, each the sum of its nodes' capacity."""
    total: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for node in nodes:
        res = node.get("Resources", {})
        for key in res:
            if key.startswith(GROUP_PREFIX):
                acc = total[key[len(GROUP_PREFIX) :]]
                acc[0] += int(res.get("CPU", 0))
                acc[1] += int(res.get("memory", 0)) // 2**20
                acc[2] += int(res.get("GPU", 0))
                acc[3] += 1
    return [ResourceGroup(name, c, m, g, nodes=n) for name, (c, m, g, n) in sorted(total.items())]


def _death(exc: BaseException, node: str) -> Exit:
    text = str(exc)
    if "node has died" in text or "node died" in text:
        return Exit(None, f"NodeLost: node {node} died and took the instance with it")
    last = [line.strip() for line in text.splitlines() if line.strip()]
    return Exit(None, f"the instance's actor died: {last[-1] if last else type(exc).__name__}")


@dataclass
class _Tracked:
    actor: Any
    address: Address
    token: str
    #: how it ended (from the watcher), and its log's last lines then
    exit: Exit | None = None
    tail: str = ""


class RayRuntime(Runtime):
    def __init__(
        self,
        address: str,
        logs_dir: Path,
        *,
        cluster: RayCluster | None = None,
        start_timeout: float = 60.0,
        watch_interval: float = 1.0,
        call_timeout: float = 10.0,
    ) -> None:
        self.cluster = cluster or RayCluster(address)
        self.logs_dir = logs_dir
        self.start_timeout = start_timeout
        self.watch_interval = watch_interval
        self.call_timeout = call_timeout
        self._instances: dict[str, _Tracked] = {}
        self._http = httpx.AsyncClient(timeout=2.0)
        self._watcher: asyncio.Task[None] | None = None
        self._groups: tuple[float, list[ResourceGroup]] = (0.0, [])
        #: handed to every instance: where oss:// and s3:// go (the nodes' own environment
        #: does not know); never logged
        self._env = storage_env(self.cluster.node_ip())

    # -- resource groups --------------------------------------------------------------

    def resource_groups(self) -> list[ResourceGroup]:
        """The groups the cluster's live nodes declare (asked at most once a second)."""
        at, groups = self._groups
        if time.monotonic() - at > 1.0:
            groups = groups_of(self.cluster.nodes())
            self._groups = (time.monotonic(), groups)
        return groups

    # -- the contract -----------------------------------------------------------------

    async def start(self, launch: Launch) -> Address:
        self._watch()
        actor, address = await asyncio.to_thread(self._start, launch)
        self._instances[launch.instance_id] = _Tracked(actor, address, launch.internal_token)
        return address

    def _start(self, launch: Launch) -> tuple[Any, Address]:
        """Create the actor (once the instance's last actor has let go of the name) and
        have it start the processor; StartError when no node takes it in time."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                actor = self.cluster.create(launch, self.logs_dir, self._env)
                break
            except ValueError as exc:  # the name is still held by the last actor
                if time.monotonic() > deadline:
                    raise StartError(str(exc)) from None
                time.sleep(0.1)
        try:
            address = self.cluster.call(
                actor, "start", launch, timeout=max(deadline - time.monotonic(), 1.0)
            )
        except Exception as exc:
            self.cluster.kill(actor)
            raise StartError(self._start_failure(launch, exc)) from None
        return actor, address

    def _start_failure(self, launch: Launch, exc: Exception) -> str:
        message = self.cluster.task_error(exc)
        if message is not None:
            return message
        if self.cluster.timed_out(exc):
            return (
                f"no node of resource group {launch.resource!r} took an instance with "
                f"cpu={launch.cpu_count}, memory={launch.memory_mb} MB, gpu={launch.gpu_count} "
                f"within {self.start_timeout:.0f}s"
            )
        return f"{type(exc).__name__}: {exc}"

    def adopt(self, launch: Launch, address: Address) -> bool:
        actor = self.cluster.get(launch.instance_id)
        if actor is None:
            return False
        try:
            ended, _ = self.cluster.call(actor, "poll", timeout=self.call_timeout)
        except Exception as exc:
            log.warning("instance %s: its actor does not answer: %s", launch.instance_id, exc)
            ended = Exit(None, "no answer")
        if ended is not None:  # the process is gone: the reconciler starts a new actor
            self.cluster.kill(actor)
            return False
        self._instances[launch.instance_id] = _Tracked(actor, address, launch.internal_token)
        self._watch()
        return True

    def stop_orphans(self, known: set[str]) -> list[str]:
        """Stop the actors of instances no service owns (deleted while the control plane
        was away); their ids."""
        orphans = [name for name in self.cluster.names() if name not in known]
        for name in orphans:
            actor = self.cluster.get(name)
            if actor is not None:
                self.cluster.kill(actor)
        return orphans

    def poll(self, instance_id: str) -> Exit | None:
        tracked = self._instances.get(instance_id)
        if tracked is None:
            return Exit(None, "instance is gone")
        return tracked.exit

    async def probe(self, instance_id: str) -> bool:
        tracked = self._instances.get(instance_id)
        if tracked is None or tracked.exit is not None:
            return False
        return await probe_ready(self._http, tracked.address, tracked.token)

    async def in_flight(self, instance_id: str) -> int:
        """Asked of the instance's actor, which reads its processor's metrics on its node
        (as the local runtime does); 0 when it cannot tell."""
        count = await self._ask_actor(instance_id, "in_flight", "in-flight count")
        return 0 if count is None else int(count)

    async def cpu_seconds(self, instance_id: str) -> float | None:
        """Measured on the instance's node, by its actor; None when it cannot tell."""
        seconds = await self._ask_actor(instance_id, "cpu_seconds", "CPU time")
        return None if seconds is None else float(seconds)

    async def _ask_actor(self, instance_id: str, method: str, what: str) -> Any:
        """``method`` of a live instance's actor; None when gone or unreachable."""
        tracked = self._instances.get(instance_id)
        if tracked is None or tracked.exit is not None:
            return None
        try:
            return await self.cluster.acall(tracked.actor, method, timeout=self.call_timeout)
        except Exception as exc:
            log.debug("instance %s: %s unknown: %s", instance_id, what, exc)
            return None

    def read_log(
        self, service: str, instance_id: str, *, tail: int | None = None, offset: int | None = None
    ) -> tuple[str, int]:
        # The log stays on the instance's node; an instance whose node is gone has only
        # the lines its actor handed over when it ended.
        tracked = self._instances.get(instance_id)
        actor = tracked.actor if tracked is not None else self.cluster.get(instance_id)
        if actor is not None and (tracked is None or tracked.exit is None):
            try:
                text, end = self.cluster.call(
                    actor, "read_log", tail, offset, timeout=self.call_timeout
                )
                return str(text), int(end)
            except Exception as exc:
                log.debug("instance %s: log unreadable: %s", instance_id, exc)
        if tracked is None or offset is not None:
            return "", offset or 0
        lines = tracked.tail.splitlines(keepends=True)
        text = "".join(lines[-tail:] if tail is not None else lines) if tail != 0 else ""
        return text, len(tracked.tail)

    async def stop(self, instance_id: str, timeout: float) -> None:
        tracked = self._instances.get(instance_id)
        if tracked is None:
            return
        if tracked.exit is None:
            with contextlib.suppress(Exception):  # a dead actor has nothing left to stop
                await self.cluster.acall(
                    tracked.actor, "stop", timeout, timeout=timeout + self.call_timeout
                )
            tracked.exit = Exit(0, "stopped")
        await asyncio.to_thread(self.cluster.kill, tracked.actor)

    def forget(self, instance_id: str) -> None:
        tracked = self._instances.pop(instance_id, None)
        if tracked is not None:  # frees the name for the instance's next actor
            self.cluster.kill(tracked.actor)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._http.aclose()
        self.cluster.close()

    # -- watching ---------------------------------------------------------------------

    def _watch(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(
                self._watch_loop(), name="ray-runtime-watch"
            )

    async def _watch_loop(self) -> None:
        while True:
            live = [(i, t) for i, t in self._instances.items() if t.exit is None]
            await asyncio.gather(*(self._check(i, t) for i, t in live))
            await asyncio.sleep(self.watch_interval)

    async def _check(self, instance_id: str, tracked: _Tracked) -> None:
        """Ask one actor how its process is doing; record how it ended."""
        try:
            ended, tail = await self.cluster.acall(tracked.actor, "poll", timeout=self.call_timeout)
        except TimeoutError:
            return  # busy or unreachable for now: Ray tells us when its node is dead
        except Exception as exc:
            if not self.cluster.died(exc):
                log.debug("instance %s: poll failed: %s", instance_id, exc)
                return
            ended, tail = _death(exc, tracked.address.node), tracked.tail
        if ended is not None and tracked.exit is None:
            tracked.exit, tracked.tail = ended, tail
