"""Shared fixtures and helpers for the integration tests (real server subprocesses).

Servers are started with :func:`openeas.testing.server.start_server` on free ports and
stopped when the module that started them finishes (``launch`` is module-scoped), so
every test module shares its servers between its tests.  Model repositories are built in
``tmp_path_factory`` directories: ONNX models with :mod:`openeas.testing.onnx_models`,
Python models copied from ``tests/models``.

Test modules import the plain helpers below with ``from tests.integration.conftest
import ...``.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest

from openeas.testing.server import ServerProcess, start_server

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Python-backend test models (config.pbtxt + 1/model.py), copied into temp repositories.
TEST_MODELS = REPO_ROOT / "tests" / "models"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "python_backend: the test serves Python-backend (model.py) models"
    )


# -- repositories ---------------------------------------------------------------------


def copy_test_model(
    repo: Path,
    model: str,
    as_name: str | None = None,
    config_extra: str = "",
    replace: dict[str, str] | None = None,
) -> Path:
    """Copy ``tests/models/<model>`` into ``repo`` (renamed, config patched); its dir."""
    name = as_name or model
    target = repo / name
    shutil.copytree(TEST_MODELS / model, target, ignore=shutil.ignore_patterns("__pycache__"))
    config = (target / "config.pbtxt").read_text()
    config = config.replace(f'name: "{model}"', f'name: "{name}"', 1)
    for old, new in (replace or {}).items():
        assert old in config, f"{old!r} not in the config of {model}"
        config = config.replace(old, new)
    (target / "config.pbtxt").write_text(config + config_extra)
    return target


def write_add_constant_model(directory: Path, value: float) -> Path:
    """OUTPUT0 = INPUT0 + ``value`` (FP32, dims [-1], no batching): one model per version."""
    import onnx
    from onnx import TensorProto, helper

    from openeas.testing.onnx_models import IR_VERSION, OPSET

    const = helper.make_tensor("C", TensorProto.FLOAT, [1], [value])
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "C"], ["OUTPUT0"])],
        "add_constant",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["n"])],
        initializer=[const],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    onnx.save(model, str(path))
    return path


# -- servers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def launch(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers for this module; all are stopped (SIGTERM) when the module ends."""
    servers: list[ServerProcess] = []

    def _launch(
        repository: Path | str, *args: str, wait_ready: bool = True, timeout: float = 60.0
    ) -> ServerProcess:
        log_path = tmp_path_factory.mktemp("server-log") / "server.log"
        server = start_server(
            repository, *args, log_path=log_path, wait_ready=wait_ready, timeout=timeout
        )
        servers.append(server)
        return server

    yield _launch
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[Any]:
    """A tritonclient HTTP client for the module's ``server`` fixture."""
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(server.http_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_client(server: ServerProcess) -> Iterator[Any]:
    """A tritonclient gRPC client for the module's ``server`` fixture."""
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def server_command(*args: str) -> list[str]:
    """The command line that runs ``openeas-server`` with ``args``."""
    return [sys.executable, "-m", "openeas.server.cli", *args]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``openeas-server`` to completion (for flags that make it exit)."""
    return subprocess.run(
        server_command(*args), capture_output=True, text=True, timeout=timeout, check=False
    )


def wait_until(
    condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what or condition}; last={last!r}")


def pending_requests(server: ServerProcess, model: str) -> int:
    """The model's ``nv_inference_pending_request_count`` (queued + executing), read from
    the server's metrics endpoint."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    match = re.search(
        rf'^nv_inference_pending_request_count\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$',
        text,
        re.MULTILINE,
    )
    assert match, f"no pending count for {model}"
    return int(float(match.group(1)))


# -- raw HTTP -------------------------------------------------------------------------


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> str:
        """The ``error`` message of a JSON error body (fails the test when malformed)."""
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        doc = self.json()
        assert isinstance(doc, dict) and set(doc) == {"error"}, doc
        assert isinstance(doc["error"], str) and doc["error"], doc
        return doc["error"]

    def __repr__(self) -> str:
        return f"RawResponse({self.status}, {self.body[:300]!r})"


def raw_request(
    server: ServerProcess | int,
    method: str,
    path: str,
    body: bytes | str = b"",
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> RawResponse:
    """One request with ``http.client`` (a fresh connection unless ``conn`` is given)."""
    port = server if isinstance(server, int) else server.http_port
    own = conn is None
    connection = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = body.encode() if isinstance(body, str) else body
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        payload = response.read()
        return RawResponse(
            response.status, {k.lower(): v for k, v in response.getheaders()}, payload
        )
    finally:
        if own:
            connection.close()


def binary_infer_body(
    inputs: list[tuple[str, np.ndarray, str]],
    outputs: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor-data infer body (inputs: (name, array, datatype)) and its headers."""
    header: dict[str, Any] = {"inputs": [], **extra}
    blobs: list[bytes] = []
    for name, array, datatype in inputs:
        blob = array.tobytes()
        header["inputs"].append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    if outputs is not None:
        header["outputs"] = outputs
    head = json.dumps(header).encode()
    return head + b"".join(blobs), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }


def split_binary_response(response: RawResponse) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The JSON header of a binary response and each binary output's bytes by name."""
    length = int(response.headers["inference-header-content-length"])
    doc = json.loads(response.body[:length])
    blobs: dict[str, bytes] = {}
    offset = length
    for output in doc["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            blobs[output["name"]] = response.body[offset : offset + size]
            offset += size
    assert offset == len(response.body), "binary outputs do not add up to the body length"
    return doc, blobs


def request_bytes(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    """One HTTP/1.x request as raw bytes (``Content-Length`` added unless chunked)."""
    fields = {"Host": "test", **(headers or {})}
    if "Transfer-Encoding" not in fields:
        fields["Content-Length"] = str(len(body))
    head = [f"{method} {path} {version}", *(f"{k}: {v}" for k, v in fields.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_response(reader: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response (``Content-Length`` framed): status, headers, body."""
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body
