"""``openeas up --tls-cert/--tls-key``: the endpoints eascmd prints are HTTPS, and
tritonclient reaches the service over HTTPS and gRPC over TLS through them."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path

import gevent.ssl
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from openeas.testing.certs import HAVE_OPENSSL, make_certificates
from openeas.testing.server import free_port
from tests.integration.platform.conftest import (
    Platform,
    make_add_sub_repository,
    platform_running,
    service_doc,
)

pytestmark = pytest.mark.skipif(not HAVE_OPENSSL, reason="needs openssl")

NAME = "tls_service"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_platform(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("openeas-home")
    api, http, grpc = free_port(), free_port(), free_port()
    args = [
        f"--api-port={api}",
        f"--http-port={http}",
        f"--grpc-port={grpc}",
        f"--tls-cert={certs / 'server.pem'}",
        f"--tls-key={certs / 'server.key'}",
        "--log-level=warning",
    ]
    plat = Platform(home, api, http, grpc, args)
    with platform_running(plat):
        yield plat


@pytest.fixture(scope="module")
def created(tls_platform: Platform) -> dict[str, str]:
    repo = make_add_sub_repository(tls_platform.home / "repo")
    out = tls_platform.ok("create", str(tls_platform.write_spec(service_doc(NAME, repo))))
    return dict(re.findall(r"^\|\s+([A-Za-z ]+?) \| (\S+)\s+\|$", out, re.MULTILINE))


def _inputs(module: object) -> tuple[list[object], np.ndarray]:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    inputs = [module.InferInput(f"INPUT{i}", [1, 16], "FP32") for i in (0, 1)]  # type: ignore[attr-defined]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    return inputs, a


def test_endpoints_are_https(tls_platform: Platform, created: dict[str, str]) -> None:
    expected = f"https://127.0.0.1:{tls_platform.http_port}/api/predict/{NAME}"
    assert created["Internet Endpoint"] == expected
    desc = tls_platform.json("desc", NAME)
    assert desc["internet_endpoint"] == desc["intranet_endpoint"] == expected


def test_tritonclient_https_through_the_printed_endpoint(
    tls_platform: Platform, created: dict[str, str], certs: Path
) -> None:
    url = created["Internet Endpoint"].removeprefix("https://")
    verified = functools.partial(gevent.ssl.create_default_context, cafile=str(certs / "ca.pem"))
    client = httpclient.InferenceServerClient(url, ssl=True, ssl_context_factory=verified)
    try:
        inputs, a = _inputs(httpclient)
        result = client.infer("simple", inputs, headers={"Authorization": created["Token"]})
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + a)
    finally:
        client.close()


def test_tritonclient_grpc_over_tls(
    tls_platform: Platform, created: dict[str, str], certs: Path
) -> None:
    endpoint = tls_platform.json("desc", NAME)["grpc_endpoint"]
    assert endpoint.endswith(f":{tls_platform.grpc_port}")
    client = grpcclient.InferenceServerClient(
        f"127.0.0.1:{tls_platform.grpc_port}", ssl=True, root_certificates=str(certs / "ca.pem")
    )
    with client:
        inputs, a = _inputs(grpcclient)
        result = client.infer("simple", inputs, headers={"authorization": created["Token"]})
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - a)
