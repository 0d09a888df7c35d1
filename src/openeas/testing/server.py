"""Start a real ``openeas-server`` process on free ports, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    """A running server: its process, ports and log file."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit status (kills after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    repository: Path | str | Sequence[Path | str],
    *extra_args: str,
    log_path: Path,
    wait_ready: bool = True,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start ``openeas-server`` on free ports; wait until live (and ready if asked).

    A free port can be taken by someone else (an outgoing connection's ephemeral port)
    before the server binds it; then the server is started again on other ports.
    """
    for _ in range(_BIND_ATTEMPTS - 1):
        try:
            return _start_server_once(repository, extra_args, log_path, wait_ready, timeout, env)
        except _PortTaken:
            continue
    return _start_server_once(repository, extra_args, log_path, wait_ready, timeout, env)


_BIND_ATTEMPTS = 3


class _PortTaken(RuntimeError):
    """One of the ports :func:`free_port` picked was taken before the server bound it."""


def _start_server_once(
    repository: Path | str | Sequence[Path | str],
    extra_args: Sequence[str],
    log_path: Path,
    wait_ready: bool,
    timeout: float,
    env: dict[str, str] | None,
) -> ServerProcess:
    repos = [repository] if isinstance(repository, str | Path) else list(repository)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    args = [
        sys.executable,
        "-m",
        "openeas.server.cli",
        *(f"--model-repository={r}" for r in repos),
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        *extra_args,
    ]
    log_file = open(log_path, "wb")  # noqa: SIM115 - owned by the child process
    process = subprocess.Popen(
        args, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    log_file.close()
    server = ServerProcess(process, http_port, grpc_port, metrics_port, log_path)
    path = "/v2/health/ready" if wait_ready else "/v2/health/live"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = server.log()
            ours = (http_port, grpc_port, metrics_port)
            if any(f"failed to bind 127.0.0.1:{port}:" in log for port in ours):
                raise _PortTaken(f"openeas-server exited with {process.returncode}:\n{log}")
            raise RuntimeError(f"openeas-server exited with {process.returncode}:\n{log}")
        try:
            with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    server.stop()
    raise TimeoutError(f"openeas-server did not become ready in {timeout}s:\n{server.log()}")
