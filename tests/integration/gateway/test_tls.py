"""TLS at the gateway (``Gateway(tls=...)``, ``openeas up --tls-cert/--tls-key``).

HTTPS on the HTTP port (ALPN ``http/1.1``) and gRPC over TLS on the gRPC port (ALPN
``h2``), with the real tritonclient's ``ssl`` options, against a certificate signed by a
CA made in the test (:mod:`openeas.testing.certs`).
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import logging
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gevent.ssl
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from openeas.gateway import Gateway, GatewayTls, RouteTable
from openeas.testing.certs import HAVE_OPENSSL, make_certificates
from openeas.testing.gateway import GatewayThread
from openeas.transport.tls import TlsFileError
from tests.integration.gateway.conftest import Cluster

pytestmark = pytest.mark.skipif(not HAVE_OPENSSL, reason="needs openssl")

TOKEN = "tls-token"
SERVICE = "tls_service"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_gateway(certs: Path, cluster: Cluster) -> Iterator[GatewayThread]:
    tls = GatewayTls(str(certs / "server.pem"), str(certs / "server.key"))
    with GatewayThread(tls=tls) as gw:
        gw.publish(SERVICE, TOKEN, cluster.upstreams[:1])
        yield gw


def _http_infer(client: httpclient.InferenceServerClient) -> None:
    data = np.arange(4, dtype=np.float32).reshape(1, 4)
    tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer("identity_fp32", [tensor], headers={"Authorization": TOKEN})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def _grpc_infer(client: grpcclient.InferenceServerClient) -> None:
    data = np.arange(4, dtype=np.float32).reshape(1, 4)
    tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(data)
    headers = {"authorization": TOKEN, "x-eas-service": SERVICE}
    result = client.infer("identity_fp32", [tensor], headers=headers)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_https_with_a_verified_certificate(tls_gateway: GatewayThread, certs: Path) -> None:
    verified = functools.partial(gevent.ssl.create_default_context, cafile=str(certs / "ca.pem"))
    client = httpclient.InferenceServerClient(
        tls_gateway.http_url(SERVICE), ssl=True, ssl_context_factory=verified
    )
    try:
        assert client.is_server_ready(headers={"Authorization": TOKEN})
        _http_infer(client)
    finally:
        client.close()


def test_https_insecure_skips_verification(tls_gateway: GatewayThread) -> None:
    # tritonclient's "insecure": no certificate check (a self-signed gateway, e.g.)
    client = httpclient.InferenceServerClient(
        tls_gateway.http_url(SERVICE),
        ssl=True,
        ssl_context_factory=gevent.ssl._create_unverified_context,
        insecure=True,
    )
    try:
        _http_infer(client)
    finally:
        client.close()


def test_https_client_that_does_not_trust_the_ca_is_refused(tls_gateway: GatewayThread) -> None:
    client = httpclient.InferenceServerClient(
        tls_gateway.http_url(SERVICE),
        ssl=True,
        ssl_context_factory=gevent.ssl.create_default_context,
        connection_timeout=10,
        network_timeout=10,
    )
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.is_server_live(headers={"Authorization": TOKEN})
    finally:
        client.close()


def test_grpc_over_tls(tls_gateway: GatewayThread, certs: Path) -> None:
    client = grpcclient.InferenceServerClient(
        tls_gateway.grpc_url, ssl=True, root_certificates=str(certs / "ca.pem")
    )
    with client:
        assert client.is_server_live(headers={"authorization": TOKEN, "x-eas-service": SERVICE})
        _grpc_infer(client)


def test_grpc_plaintext_client_fails_against_the_tls_port(tls_gateway: GatewayThread) -> None:
    client = grpcclient.InferenceServerClient(tls_gateway.grpc_url)
    with client, pytest.raises(InferenceServerException):
        client.is_server_live(headers={"authorization": TOKEN}, client_timeout=5)


@pytest.mark.parametrize(("port", "expected"), [("http", "http/1.1"), ("grpc", "h2")])
def test_alpn_per_port(tls_gateway: GatewayThread, certs: Path, port: str, expected: str) -> None:
    # a client offering both gets HTTP/1.1 on the HTTP port and HTTP/2 on the gRPC port
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.set_alpn_protocols(["h2", "http/1.1"])
    number = tls_gateway.http_port if port == "http" else tls_gateway.grpc_port
    raw = socket.create_connection(("127.0.0.1", number), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.selected_alpn_protocol() == expected


def test_plain_http_to_the_tls_port_fails_cleanly(
    tls_gateway: GatewayThread, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    conn = http.client.HTTPConnection("127.0.0.1", tls_gateway.http_port, timeout=10)
    try:
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            conn.request("GET", f"/api/predict/{SERVICE}/v2/health/ready")
            conn.getresponse()
    finally:
        conn.close()
    # nothing was logged as an error, and HTTPS still works
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    test_https_with_a_verified_certificate(tls_gateway, certs)


async def _start(gateway_tls: GatewayTls) -> None:
    gateway = Gateway(RouteTable(), host="127.0.0.1", http_port=0, grpc_port=0, tls=gateway_tls)
    await gateway.start()
    await gateway.stop(0)


def test_unusable_files_fail_the_start_naming_them(certs: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsFileError, match="garbage.pem"):
        asyncio.run(_start(GatewayTls(str(garbage), str(certs / "server.key"))))
    # a key that does not belong to the certificate
    with pytest.raises(TlsFileError, match="ca.key"):
        asyncio.run(_start(GatewayTls(str(certs / "server.pem"), str(certs / "ca.key"))))


def _up(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openeas.cli.main", "up", "--api-port=1", *flags],
        env={**os.environ, "OPENEAS_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_openeas_up_names_the_tls_flag_at_fault(certs: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    result = _up(tmp_path, f"--tls-cert={garbage}", f"--tls-key={certs / 'server.key'}")
    assert result.returncode == 2, result
    assert "'--tls-cert' / '--tls-key'" in result.stderr and "garbage.pem" in result.stderr
    result = _up(tmp_path, f"--tls-cert={certs / 'server.pem'}")
    assert result.returncode == 2, result
    assert "--tls-cert needs --tls-key" in result.stderr
    result = _up(tmp_path, f"--tls-cert={tmp_path / 'missing.pem'}", "--tls-key=x")
    assert result.returncode == 2, result
    assert "'--tls-cert'" in result.stderr and "missing.pem" in result.stderr
    # nothing was started: the checks come before the platform
    assert not (tmp_path / "home" / "platform.db").exists()
