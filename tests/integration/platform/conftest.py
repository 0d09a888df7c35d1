"""A real platform (``openeas up`` subprocess on free ports) per test module.

Each module gets its own ``$OPENEAS_HOME`` and platform process; ``eascmd`` runs as a real
subprocess against it.  At the end the platform is stopped gracefully (which stops its
instances); any instance process still alive after that is killed by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from openeas.testing.onnx_models import ADD_SUB_CONFIG, write_add_sub_model, write_model_config
from openeas.testing.server import free_port


@dataclass
class Platform:
    home: Path
    api_port: int
    http_port: int
    grpc_port: int
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    seen_pids: set[int] = field(default_factory=set)
    #: more environment for the platform and eascmd (e.g. an object-store endpoint)
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.extra_env, "OPENEAS_HOME": str(self.home)}

    def start(self) -> None:
        log = open(self.home / "platform-test.log", "ab")  # noqa: SIM115 - the child's
        self.process = subprocess.Popen(
            [sys.executable, "-m", "openeas.cli.main", "up", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{self.api_port}/healthz", timeout=1).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"platform did not answer:\n{self.log()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 90) -> int:
        assert self.process is not None
        self.remember_pids()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log(self) -> str:
        return (self.home / "platform-test.log").read_text(errors="replace")

    def remember_pids(self) -> None:
        db = self.home / "platform.db"
        if db.exists():
            with sqlite3.connect(db) as conn:
                self.seen_pids |= {r[0] for r in conn.execute("SELECT pid FROM instances") if r[0]}

    def eascmd(
        self, *args: str, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "openeas.cli.eascmd", *args],
            env=self.env,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            check=False,
        )
        self.remember_pids()
        return result

    def eascmd_platform(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``openeas ARGS`` (e.g. ``down``) against this platform's home."""
        return subprocess.run(
            [sys.executable, "-m", "openeas.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, timeout: float = 120) -> str:
        result = self.eascmd(*args, timeout=timeout)
        assert result.returncode == 0, f"eascmd {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def write_spec(self, doc: dict[str, Any], name: str = "service.json") -> Path:
        path = self.home / name
        path.write_text(json.dumps(doc))
        return path

    @property
    def gateway_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"


def make_add_sub_repository(root: Path) -> Path:
    """A repository with Triton's ``simple`` add/sub ONNX model."""
    write_add_sub_model(root / "simple" / "1")
    write_model_config(root / "simple", ADD_SUB_CONFIG)
    return root


def service_doc(name: str, repository: str | Path, **metadata: Any) -> dict[str, Any]:
    """The user's document's service JSON, adapted: no GPU, the local group."""
    return {
        "name": name,
        "processor": "triton",
        "processor_params": [
            f"--model-repository={repository}",
            "--allow-grpc=true",
            "--allow-http=true",
        ],
        "metadata": {
            "instance": 1,
            "cpu": 1,
            "gpu": 0,
            "memory": 2000,
            "resource": "default",
            "rpc.keepalive": 3000,
            **metadata,
        },
    }


@contextlib.contextmanager
def platform_running(plat: Platform) -> Iterator[Platform]:
    """Start ``plat``; on exit stop it and kill any instance it leaves behind."""
    plat.start()
    try:
        yield plat
    finally:
        plat.stop()
        _kill_leftovers(plat.seen_pids)


def _kill_leftovers(pids: set[int]) -> None:
    for pid in pids:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if b"OPENEAS_INSTANCE_ID=" in environ:  # only our instances, never a recycled pid
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("openeas-home")
    api, http, grpc = free_port(), free_port(), free_port()
    args = [
        f"--api-port={api}",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        "--cpus=16",
        "--memory=64000",
        "--restart-backoff=0.2",
        "--log-level=warning",
    ]
    plat = Platform(home, api, http, grpc, args)
    with platform_running(plat):
        yield plat
