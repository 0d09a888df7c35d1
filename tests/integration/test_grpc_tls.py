"""gRPC over TLS and mutual TLS (``--grpc-use-ssl``, ``--grpc-use-ssl-mutual``).

Certificates come from the ``openssl`` command line (:mod:`openeas.testing.certs`): a CA,
a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from openeas.server.options import parse_args
from openeas.testing.certs import HAVE_OPENSSL, make_certificates
from openeas.testing.onnx_models import write_identity_model, write_model_config
from openeas.testing.server import ServerProcess, start_server

pytestmark = pytest.mark.skipif(not HAVE_OPENSSL, reason="needs openssl")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("tls_repo")
    write_identity_model(repo / "identity" / "1", "FP32", (-1,))
    write_model_config(
        repo / "identity",
        'name: "identity"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n',
    )
    return repo


def _server(repository: Path, certs: Path, log: Path, *flags: str) -> ServerProcess:
    return start_server(
        repository,
        f"--grpc-server-cert={certs / 'server.pem'}",
        f"--grpc-server-key={certs / 'server.key'}",
        *flags,
        log_path=log,
    )


@pytest.fixture(scope="module")
def tls_server(
    repository: Path, certs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("logs") / "tls.log"
    server = _server(repository, certs, log, "--grpc-use-ssl=true")
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def mutual_server(
    repository: Path, certs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("logs") / "mutual.log"
    server = _server(
        repository,
        certs,
        log,
        "--grpc-use-ssl-mutual=true",
        f"--grpc-root-cert={certs / 'ca.pem'}",
    )
    yield server
    assert server.stop() == 0, server.log()


def _infer(client: grpcclient.InferenceServerClient) -> None:
    data = np.arange(8, dtype=np.float32)
    tensor = grpcclient.InferInput("INPUT0", [8], "FP32")
    tensor.set_data_from_numpy(data)
    out = client.infer("identity", [tensor]).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(out, data)


def test_tls_client_is_served(tls_server: ServerProcess, certs: Path) -> None:
    client = grpcclient.InferenceServerClient(
        tls_server.grpc_url, ssl=True, root_certificates=str(certs / "ca.pem")
    )
    with client:
        assert client.is_server_live()
        _infer(client)


def test_plaintext_client_is_refused_by_a_tls_server(tls_server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(tls_server.grpc_url)
    with client, pytest.raises(InferenceServerException):
        client.is_server_live(client_timeout=5)


def test_mutual_tls_needs_a_client_certificate(mutual_server: ServerProcess, certs: Path) -> None:
    without = grpcclient.InferenceServerClient(
        mutual_server.grpc_url, ssl=True, root_certificates=str(certs / "ca.pem")
    )
    with without, pytest.raises(InferenceServerException):
        without.is_server_live(client_timeout=5)
    with_cert = grpcclient.InferenceServerClient(
        mutual_server.grpc_url,
        ssl=True,
        root_certificates=str(certs / "ca.pem"),
        private_key=str(certs / "client.key"),
        certificate_chain=str(certs / "client.pem"),
    )
    with with_cert:
        assert with_cert.is_server_live()
        _infer(with_cert)


def test_tls_flags_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--model-repository=/m", "--grpc-use-ssl=true"])
    assert exc.value.code == 2
    assert "--grpc-server-cert" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(
            ["--model-repository=/m", "--grpc-use-ssl-mutual=true",
             "--grpc-server-cert=c", "--grpc-server-key=k"]
        )  # fmt: skip
    assert "--grpc-root-cert" in capsys.readouterr().err
    options = parse_args(
        ["--model-repository=/m", "--grpc-use-ssl-mutual=1", "--grpc-server-cert=c",
         "--grpc-server-key=k", "--grpc-root-cert=r"]
    )  # fmt: skip
    assert options.grpc_use_ssl and options.grpc_use_ssl_mutual


def test_unreadable_certificate_is_a_startup_error(repository: Path, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as exc:
        start_server(
            repository,
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={tmp_path / 'missing.pem'}",
            f"--grpc-server-key={tmp_path / 'missing.key'}",
            log_path=tmp_path / "server.log",
            timeout=30,
        )
    assert "missing.pem" in str(exc.value)
