"""Fixtures of the gateway tests: three real ``openeas-server`` instances and a gateway.

The instances serve one repository of Python test models; the gateway runs in a
background thread of the test process (:class:`openeas.testing.gateway.GatewayThread`)
on free ports.  Each test publishes its own service names, so tests do not see each
other's routes; instances are shared by every test of the package.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openeas.gateway import Upstream
from openeas.testing.gateway import GatewayThread, upstream_of
from openeas.testing.server import ServerProcess, free_port, start_server
from tests.integration.conftest import RawResponse, copy_test_model

pytestmark = pytest.mark.python_backend

#: seconds the ``slow`` model sleeps per execution in these tests
SLOW_S = 1.5


@dataclass
class Cluster:
    """Three instances of one repository, as instance ids i0, i1, i2."""

    servers: list[ServerProcess]
    repository: Path

    @property
    def upstreams(self) -> list[Upstream]:
        return [upstream_of(s, f"i{n}") for n, s in enumerate(self.servers)]

    def success_counts(self, model: str) -> list[int]:
        """Each instance's count of successful inferences of ``model`` (its own stats)."""
        import tritonclient.http as httpclient

        counts = []
        for server in self.servers:
            client = httpclient.InferenceServerClient(server.http_url)
            try:
                stats = client.get_inference_statistics(model)
            finally:
                client.close()
            counts.append(
                sum(s["inference_stats"]["success"]["count"] for s in stats["model_stats"])
            )
        return counts


def make_repository(root: Path) -> Path:
    repo = root / "models"
    repo.mkdir()
    for model in ("identity_fp32", "identity_bytes", "repeat_decoupled", "add_sub"):
        copy_test_model(repo, model)
    copy_test_model(
        repo,
        "slow",
        replace={'string_value: "0.2"': f'string_value: "{SLOW_S}"', "count: 1": "count: 4"},
    )
    return repo


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("gateway-cluster")
    repo = make_repository(root)
    servers: list[ServerProcess] = []
    try:
        for n in range(3):
            servers.append(start_server(repo, log_path=root / f"server{n}.log", timeout=120))
        yield Cluster(servers, repo)
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="package")
def gateway() -> Iterator[GatewayThread]:
    with GatewayThread() as gw:
        yield gw


@pytest.fixture
def service_name(request: pytest.FixtureRequest) -> str:
    """A service name unique to the test."""
    return request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:60]


def gw_request(
    gw: GatewayThread,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
    timeout: float = 30,
) -> RawResponse:
    """One request to the gateway's HTTP port (a fresh connection unless ``conn``)."""
    own = conn is None
    connection = conn or http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        payload = response.read()
        return RawResponse(
            response.status, {k.lower(): v for k, v in response.getheaders()}, payload
        )
    finally:
        if own:
            connection.close()


class SilentInstance:
    """A TCP listener that accepts connections and reads requests but never answers."""

    def __init__(self) -> None:
        self.port = free_port()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)

    def upstream(self, instance_id: str) -> Upstream:
        return Upstream(instance_id, "127.0.0.1", self.port, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._conns:
            conn.close()
        self._sock.close()


@pytest.fixture
def silent_instance() -> Iterator[SilentInstance]:
    instance = SilentInstance()
    yield instance
    instance.close()


def dead_upstream(instance_id: str) -> Upstream:
    """An instance address where nothing listens (connections are refused)."""
    return Upstream(instance_id, "127.0.0.1", free_port(), free_port())


def json_infer_body(values: list[float], batched: bool = True, **parameters: Any) -> bytes:
    """A JSON infer request with one FP32 INPUT0: one row (``batched``, identity_fp32) or
    a plain vector (``slow``)."""
    import json

    shape = [1, len(values)] if batched else [len(values)]
    doc: dict[str, Any] = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": shape, "data": values}]
    }
    if parameters:
        doc["parameters"] = parameters
    return json.dumps(doc).encode()
