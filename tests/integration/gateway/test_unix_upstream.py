"""Instances on a Unix-domain socket (``--http-unix-socket``) and the gateway using it."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from openeas.gateway import Upstream
from openeas.testing.gateway import GatewayThread
from openeas.testing.server import ServerProcess, free_port, start_server
from openeas.transport.sockets import socket_address
from tests.integration.gateway.conftest import make_repository

TOKEN = "unix-token"


@pytest.fixture(scope="module")
def unix_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    root = tmp_path_factory.mktemp("unix")
    name = f"@openeas-test-{uuid.uuid4().hex[:12]}"
    server = start_server(
        make_repository(root), f"--http-unix-socket={name}", log_path=root / "log"
    )
    yield server, name
    assert server.stop() == 0, server.log()


def _raw_get(address: str, path: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(address)
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_server_answers_on_its_unix_socket(unix_server: tuple[ServerProcess, str]) -> None:
    server, name = unix_server
    answer = _raw_get(socket_address(name), "/v2/health/ready")
    assert answer.startswith(b"HTTP/1.1 200")
    assert f"Started HTTPService at unix:{name}" in server.log()


def test_file_socket_is_served_and_removed_on_stop(tmp_path: Path) -> None:
    path = tmp_path / "http.sock"
    path.touch()  # a regular file in the way is not replaced: a clear start-up error
    with pytest.raises(RuntimeError, match="http.sock"):
        start_server(
            make_repository(tmp_path), f"--http-unix-socket={path}",
            log_path=tmp_path / "bad.log", timeout=30,
        )  # fmt: skip
    path.unlink()
    server = start_server(
        tmp_path / "models", f"--http-unix-socket={path}", log_path=tmp_path / "log"
    )
    try:
        assert _raw_get(str(path), "/v2/health/live").startswith(b"HTTP/1.1 200")
    finally:
        assert server.stop() == 0
    assert not path.exists() and not Path(f"{path}.grpc").exists()


def _infer(gateway: GatewayThread, service: str) -> np.ndarray:
    client = httpclient.InferenceServerClient(gateway.http_url(service))
    try:
        data = np.arange(16, dtype=np.float32).reshape(1, 16)
        tensor = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        tensor.set_data_from_numpy(data)
        result = client.infer("identity_fp32", [tensor], headers={"Authorization": TOKEN})
        out = result.as_numpy("OUTPUT0")
        assert out is not None
        np.testing.assert_array_equal(out, data)
        return out
    finally:
        client.close()


def test_gateway_reaches_the_instance_over_its_unix_socket(
    unix_server: tuple[ServerProcess, str],
) -> None:
    server, name = unix_server
    # nothing listens on the TCP port given: only the socket can answer
    upstream = Upstream("u0", "127.0.0.1", free_port(), None, name)
    with GatewayThread() as gateway:
        gateway.publish("unix-svc", TOKEN, [upstream])
        for _ in range(3):
            _infer(gateway, "unix-svc")


def test_gateway_falls_back_to_tcp_without_the_socket(
    unix_server: tuple[ServerProcess, str],
) -> None:
    server, _ = unix_server
    upstream = Upstream("u0", "127.0.0.1", server.http_port, None, "@openeas-test-missing")
    with GatewayThread() as gateway:
        gateway.publish("tcp-svc", TOKEN, [upstream])
        _infer(gateway, "tcp-svc")
        _infer(gateway, "tcp-svc")


def _grpc_infer(gateway: GatewayThread, service: str) -> None:
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    try:
        data = np.arange(4, dtype=np.float32).reshape(1, 4)
        tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
        tensor.set_data_from_numpy(data)
        headers = {"authorization": TOKEN, "x-eas-service": service}
        result = client.infer("identity_fp32", [tensor], headers=headers)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    finally:
        client.close()


def test_grpc_reaches_the_instance_over_its_unix_socket(
    unix_server: tuple[ServerProcess, str],
) -> None:
    server, name = unix_server
    # nothing listens on the TCP ports given: only the socket can answer
    upstream = Upstream("u0", "127.0.0.1", free_port(), free_port(), name)
    with GatewayThread() as gateway:
        gateway.publish("unix-grpc", TOKEN, [upstream])
        for _ in range(3):
            _grpc_infer(gateway, "unix-grpc")


def test_grpc_falls_back_to_tcp_without_the_socket(
    unix_server: tuple[ServerProcess, str],
) -> None:
    server, _ = unix_server
    upstream = Upstream(
        "u0", "127.0.0.1", server.http_port, server.grpc_port, "@openeas-test-missing"
    )
    with GatewayThread() as gateway:
        gateway.publish("tcp-grpc", TOKEN, [upstream])
        _grpc_infer(gateway, "tcp-grpc")
        _grpc_infer(gateway, "tcp-grpc")
