"""The local runtime: each instance is an ``openeas-server`` process on this machine.

Instances run in their own session, so they outlive the control plane (a restarted control
plane re-adopts them by pid; the ``OPENEAS_INSTANCE_ID`` in their environment guards
against a recycled pid).  ``cpu`` pins the process to that many cores
(``sched_setaffinity`` before exec) and sets the backends' thread counts; ``memory`` is
enforced by watching the process tree's resident memory and killing it when it goes over
(reported as OOMKilled) -- an address-space rlimit would break onnxruntime, which reserves
far more virtual memory than it uses, and cgroups are not writable here.

The runtime owns the instance's addresses (it picks free ports on its host and serves an
abstract Unix socket too), probes readiness over HTTP with the instance's token, and keeps
each instance's log in ``<logs_dir>/<service>/<instance>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from openeas.platform.children import parent_death_signal
from openeas.platform.runtimes.base import Address, Exit, Launch, Runtime, StartError
from openeas.protocol import instance_token

log = logging.getLogger(__name__)

INSTANCE_ENV = "OPENEAS_INSTANCE_ID"
_THREAD_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the instance binds it moments later)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def command(launch: Launch, address: Address) -> list[str]:
    """The processor command line of an instance."""
    return [
        sys.executable,
        "-m",
        "openeas.server.cli",
        # The service's own flags come after ours, so a user's backend setting wins.
        f"--backend-config=onnxruntime,intra_op_thread_count={launch.cpu_count}",
        *launch.processor_params,
        f"--http-address={address.host}",
        f"--grpc-address={address.host}",
        f"--metrics-address={address.host}",
        f"--http-port={address.http_port}",
        f"--grpc-port={address.grpc_port}",
        f"--metrics-port={address.metrics_port}",
        *([f"--http-unix-socket={address.unix_socket}"] if address.unix_socket else []),
    ]


def unix_socket_name(instance_id: str) -> str:
    """The abstract-namespace socket an instance serves HTTP on, besides its port."""
    return f"@openeas-{instance_id}"


def environment(launch: Launch) -> dict[str, str]:
    env = dict(os.environ)
    env[INSTANCE_ENV] = launch.instance_id
    # Readable by this user only (/proc/<pid>/environ), taken out by the processor.
    env[instance_token.ENV] = launch.internal_token
    env["PYTHONUNBUFFERED"] = "1"
    for name in _THREAD_ENV:
        env[name] = str(launch.cpu_count)
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in launch.gpus)
    return env


async def probe_ready(http: httpx.AsyncClient, address: Address, token: str) -> bool:
    """True when the instance at ``address`` answers ``/v2/health/ready`` (over TCP)."""
    url = f"http://{address.host}:{address.http_port}/v2/health/ready"
    headers = {instance_token.HEADER.decode(): token} if token else None
    try:
        response = await http.get(url, headers=headers)
    except httpx.HTTPError as exc:
        log.debug("probe %s: %s", url, exc)
        return False
    log.debug("probe %s: %d", url, response.status_code)
    return response.status_code == 200


def _same_instance(pid: int, instance_id: str) -> bool:
    """True when ``pid`` is alive and is the given instance (not a recycled pid)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        state = psutil.Process(pid).status()
    except (OSError, psutil.Error):
        return False
    if state == psutil.STATUS_ZOMBIE:
        return False
    return f"{INSTANCE_ENV}={instance_id}".encode() in environ.split(b"\0")


@dataclass
class _Watched:
    """What the runtime knows of one instance."""

    address: Address
    token: str
    memory_mb: int
    #: the process this control plane started (its exit code is known); None if adopted
    child: subprocess.Popen[bytes] | None = None
    #: the memory watchdog's kill reason
    killed: str = ""


class LocalRuntime(Runtime):
    def __init__(
        self,
        logs_dir: Path,
        host: str = "127.0.0.1",
        *,
        die_with_parent: bool = False,
        unix_socket: bool = True,
    ) -> None:
        self.logs_dir = logs_dir
        self.host = host
        #: instances get SIGTERM when the starting thread dies (a Ray actor's supervisor:
        #: its processor must not outlive it); the control plane's own instances outlive it
        self.die_with_parent = die_with_parent
        #: serve an abstract Unix socket too (only useful to a gateway on this machine)
        self.unix_socket = unix_socket
        self._instances: dict[str, _Watched] = {}
        self._http = httpx.AsyncClient(timeout=2.0)

    def log_path(self, service: str, instance_id: str) -> Path:
        return self.logs_dir / service / f"{instance_id}.log"

    async def start(self, launch: Launch) -> Address:
        address = Address(
            self.host,
            free_port(self.host),
            free_port(self.host),
            free_port(self.host),
            unix_socket_name(launch.instance_id) if self.unix_socket else None,
        )
        path = self.log_path(launch.service, launch.instance_id)
        try:
            process = self._spawn(launch, address, path, self.die_with_parent)
        except OSError as exc:
            raise StartError(str(exc)) from exc
        address = dataclasses.replace(address, pid=process.pid)
        self._instances[launch.instance_id] = _Watched(
            address, launch.internal_token, launch.memory_mb, process
        )
        return address

    @staticmethod
    def _spawn(
        launch: Launch, address: Address, path: Path, die_with_parent: bool
    ) -> subprocess.Popen[bytes]:
        path.parent.mkdir(parents=True, exist_ok=True)
        cpus = set(launch.cpus)
        arm = parent_death_signal(signal.SIGTERM) if die_with_parent else None

        def pin() -> None:  # runs in the child between fork and exec
            if cpus:
                os.sched_setaffinity(0, cpus)
            if arm is not None:
                arm()

        with open(path, "ab") as log_file:
            return subprocess.Popen(
                command(launch, address),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=environment(launch),
                start_new_session=True,
                preexec_fn=pin,
                cwd=str(path.parent),
            )

    def adopt(self, launch: Launch, address: Address) -> bool:
        if address.pid is None or not _same_instance(address.pid, launch.instance_id):
            return False
        self._instances[launch.instance_id] = _Watched(
            address, launch.internal_token, launch.memory_mb
        )
        return True

    def pid(self, instance_id: str) -> int | None:
        watched = self._instances.get(instance_id)
        return watched.address.pid if watched is not None else None

    def poll(self, instance_id: str) -> Exit | None:
        return self._exited(instance_id) or self._enforce_limits(instance_id)

    def _exited(self, instance_id: str) -> Exit | None:
        watched = self._instances.get(instance_id)
        if watched is None:
            return Exit(None, "process is gone")
        if watched.child is None:  # adopted: only the pid is known
            pid = watched.address.pid
            if pid is not None and _same_instance(pid, instance_id):
                return None
            return Exit(None, watched.killed or "process is gone")
        code = watched.child.poll()
        if code is None:
            return None
        if watched.killed:
            return Exit(code, watched.killed)
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else -code
            return Exit(code, f"killed by signal {name}")
        return Exit(code, f"exited with status {code}")

    def _enforce_limits(self, instance_id: str) -> Exit | None:
        """Kill an instance over its memory (the OS does not do it for us, see above)."""
        watched = self._instances.get(instance_id)
        if watched is None or not watched.memory_mb or watched.killed:
            return None
        pid = watched.address.pid
        try:
            proc = psutil.Process(pid)
            rss = proc.memory_info().rss + sum(
                c.memory_info().rss for c in proc.children(recursive=True)
            )
        except psutil.Error:
            return None
        if rss <= watched.memory_mb * 2**20:
            return None
        watched.killed = (
            f"OOMKilled: resident memory {rss // 2**20} MB exceeded the limit of "
            f"{watched.memory_mb} MB"
        )
        if pid is not None:
            self._signal_group(pid, signal.SIGKILL)
        return Exit(None, watched.killed)

    async def cpu_seconds(self, instance_id: str) -> float | None:
        watched = self._instances.get(instance_id)
        pid = watched.address.pid if watched is not None else None
        return process_cpu_seconds(pid) if pid is not None else None

    async def probe(self, instance_id: str) -> bool:
        watched = self._instances.get(instance_id)
        if watched is None:
            return False
        return await probe_ready(self._http, watched.address, watched.token)

    async def in_flight(self, instance_id: str) -> int:
        """The sum of the processor's ``nv_inference_pending_request_count`` (its
        schedulers' queued and executing requests), read from its metrics port."""
        watched = self._instances.get(instance_id)
        if watched is None or not watched.address.metrics_port:
            return 0
        a = watched.address
        url = f"http://{a.host}:{a.metrics_port}/metrics"
        headers = {instance_token.HEADER.decode(): watched.token} if watched.token else None
        try:
            response = await self._http.get(url, headers=headers)
        except httpx.HTTPError as exc:
            log.debug("in-flight count %s: %s", url, exc)
            return 0
        return pending_requests(response.text) if response.status_code == 200 else 0

    def read_log(
        self, service: str, instance_id: str, *, tail: int | None = None, offset: int | None = None
    ) -> tuple[str, int]:
        try:
            with open(self.log_path(service, instance_id), "rb") as handle:
                if offset is not None:
                    handle.seek(offset)
                    data = handle.read()
                elif tail is not None:
                    data = b"".join(deque(handle, maxlen=max(tail, 0)))
                else:
                    data = handle.read()
                end = handle.tell()
        except FileNotFoundError:
            return "", 0
        return data.decode(errors="replace"), end

    async def stop(self, instance_id: str, timeout: float) -> None:
        pid = self.pid(instance_id)
        if pid is None or self._exited(instance_id) is not None:
            return
        try:
            os.kill(pid, signal.SIGTERM)  # the processor stops its own helpers
        except ProcessLookupError:
            return
        deadline = asyncio.get_running_loop().time() + timeout
        while self._exited(instance_id) is None:
            if asyncio.get_running_loop().time() > deadline:
                self._signal_group(pid, signal.SIGKILL)
                break
            await asyncio.sleep(0.05)
        while self._exited(instance_id) is None:
            await asyncio.sleep(0.05)

    def forget(self, instance_id: str) -> None:
        watched = self._instances.pop(instance_id, None)
        child = watched.child if watched is not None else None
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()

    async def close(self) -> None:
        await self._http.aclose()

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        """Signal the instance's session (the processor and any helper processes)."""
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(pid, sig)


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` and its descendants (those still
    running and those that ended and were waited for); None when it is gone."""
    try:
        proc = psutil.Process(pid)
        total = 0.0
        for member in (proc, *proc.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):  # a helper that just ended
                times = member.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
    except psutil.Error:
        return None
    return total


def pending_requests(metrics: str) -> int:
    """Sum of ``nv_inference_pending_request_count`` in a Prometheus text page."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("nv_inference_pending_request_count{"):
            with contextlib.suppress(ValueError, IndexError):
                total += float(line.rsplit(" ", 1)[1])
    return int(total)
