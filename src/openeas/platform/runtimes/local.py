"""The local runtime: each instance is an ``openeas-server`` process on this machine.

Instances run in their own session, so they outlive the control plane (a restarted control
plane re-adopts them by pid; the ``OPENEAS_INSTANCE_ID`` in their environment guards
against a recycled pid).  ``cpu`` pins the process to that many cores
(``sched_setaffinity`` before exec) and sets the backends' thread counts; ``memory`` is
enforced by watching the process tree's resident memory and killing it when it goes over
(reported as OOMKilled) -- an address-space rlimit would break onnxruntime, which reserves
far more virtual memory than it uses, and cgroups are not writable here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from openeas.platform.runtimes.base import Exit, Launch, Runtime
from openeas.protocol import instance_token

INSTANCE_ENV = "OPENEAS_INSTANCE_ID"
_THREAD_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
)


def command(launch: Launch) -> list[str]:
    """The processor command line of an instance."""
    return [
        sys.executable,
        "-m",
        "openeas.server.cli",
        # The service's own flags come after ours, so a user's backend setting wins.
        f"--backend-config=onnxruntime,intra_op_thread_count={launch.cpu_count}",
        *launch.processor_params,
        f"--http-address={launch.host}",
        f"--grpc-address={launch.host}",
        f"--metrics-address={launch.host}",
        f"--http-port={launch.http_port}",
        f"--grpc-port={launch.grpc_port}",
        f"--metrics-port={launch.metrics_port}",
        f"--http-unix-socket={unix_socket_name(launch.instance_id)}",
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


class LocalRuntime(Runtime):
    def __init__(self) -> None:
        #: processes this control plane started (exit codes are known)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        #: processes adopted from an earlier control plane (only the pid is known)
        self._adopted: dict[str, int] = {}
        #: instances killed by the memory watchdog, with the reason
        self._killed: dict[str, str] = {}

    async def start(self, launch: Launch) -> int:
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        cpus = set(launch.cpus)

        def pin() -> None:  # runs in the child between fork and exec
            if cpus:
                os.sched_setaffinity(0, cpus)

        with open(launch.log_path, "ab") as log:
            process = subprocess.Popen(
                command(launch),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment(launch),
                start_new_session=True,
                preexec_fn=pin,
                cwd=str(launch.log_path.parent),
            )
        self._children[launch.instance_id] = process
        self._killed.pop(launch.instance_id, None)
        return process.pid

    def adopt(self, instance_id: str, pid: int) -> bool:
        if not _same_instance(pid, instance_id):
            return False
        self._adopted[instance_id] = pid
        return True

    def pid(self, instance_id: str) -> int | None:
        child = self._children.get(instance_id)
        return child.pid if child is not None else self._adopted.get(instance_id)

    def exited(self, instance_id: str) -> Exit | None:
        killed = self._killed.get(instance_id)
        child = self._children.get(instance_id)
        if child is not None:
            code = child.poll()
            if code is None:
                return None
            if killed:
                return Exit(code, killed)
            if code < 0:
                name = signal.Signals(-code).name if -code in signal.valid_signals() else -code
                return Exit(code, f"killed by signal {name}")
            return Exit(code, f"exited with status {code}")
        pid = self._adopted.get(instance_id)
        if pid is not None and _same_instance(pid, instance_id):
            return None
        return Exit(None, killed or "process is gone")

    def enforce_limits(self, instance_id: str, memory_mb: int) -> Exit | None:
        pid = self.pid(instance_id)
        if not memory_mb or pid is None or instance_id in self._killed:
            return None
        try:
            proc = psutil.Process(pid)
            rss = proc.memory_info().rss + sum(
                c.memory_info().rss for c in proc.children(recursive=True)
            )
        except psutil.Error:
            return None
        if rss <= memory_mb * 2**20:
            return None
        reason = (
            f"OOMKilled: resident memory {rss // 2**20} MB exceeded the limit of {memory_mb} MB"
        )
        self._killed[instance_id] = reason
        self._signal_group(pid, signal.SIGKILL)
        return Exit(None, reason)

    async def stop(self, instance_id: str, timeout: float) -> None:
        pid = self.pid(instance_id)
        if pid is None or self.exited(instance_id) is not None:
            return
        try:
            os.kill(pid, signal.SIGTERM)  # the processor stops its own helpers
        except ProcessLookupError:
            return
        deadline = asyncio.get_running_loop().time() + timeout
        while self.exited(instance_id) is None:
            if asyncio.get_running_loop().time() > deadline:
                self._signal_group(pid, signal.SIGKILL)
                break
            await asyncio.sleep(0.05)
        while self.exited(instance_id) is None:
            await asyncio.sleep(0.05)

    def forget(self, instance_id: str) -> None:
        child = self._children.pop(instance_id, None)
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        self._adopted.pop(instance_id, None)
        self._killed.pop(instance_id, None)

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        """Signal the instance's session (the processor and any helper processes)."""
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(pid, sig)

    def unix_socket(self, instance_id: str) -> str | None:
        return unix_socket_name(instance_id)
