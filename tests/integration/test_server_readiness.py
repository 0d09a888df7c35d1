"""Strict server readiness (``/v2/health/ready``, gRPC ``ServerReady``) follows Triton's
rule: every model that got as far as loading is ready or was unloaded.  A load that fails
before that (a name not in the repository, a config that does not parse) leaves the server
ready; a model that fails later (no version, a version that does not load) makes it not
ready until it is unloaded.

The tests run in file order and share one explicit-mode server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from openeas.testing.onnx_models import ADD_SUB_CONFIG, write_add_sub_model, write_model_config
from tests.integration.conftest import raw_request


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readiness-repo")
    for name in ("simple", "other"):
        write_add_sub_model(root / name / "1", dims=(16,))
        write_model_config(root / name, ADD_SUB_CONFIG.replace('"simple"', f'"{name}"'))
    # the config does not parse: rejected before any version is tried
    write_add_sub_model(root / "badconfig" / "1", dims=(16,))
    (root / "badconfig" / "config.pbtxt").write_text("max_batch_size: {{ not protobuf")
    # the config is fine, the model file is not: version 1 fails to load
    write_model_config(root / "broken", ADD_SUB_CONFIG.replace('"simple"', '"broken"'))
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    # the config is fine, but there is no version directory: fails after the config
    write_model_config(root / "noversion", ADD_SUB_CONFIG.replace('"simple"', '"noversion"'))
    return root


@pytest.fixture(scope="module")
def server(launch, repo):
    return launch(repo, "--model-control-mode=explicit", "--load-model=simple")


def _ready_on_both(server, client) -> tuple[bool, bool]:
    with grpcclient.InferenceServerClient(server.grpc_url) as grpc_client:
        return client.is_server_ready(), grpc_client.is_server_ready()


def test_a_load_of_an_unknown_name_leaves_the_server_ready(server, client) -> None:
    assert _ready_on_both(server, client) == (True, True)
    response = raw_request(server, "POST", "/v2/repository/models/no_such_model/load", b"")
    assert response.status >= 400 and "no_such_model" in response.error()
    with (
        grpcclient.InferenceServerClient(server.grpc_url) as grpc_client,
        pytest.raises(InferenceServerException),
    ):
        grpc_client.load_model("no_such_model_either")
    assert _ready_on_both(server, client) == (True, True)
    assert raw_request(server, "GET", "/v2/health/ready").status == 200
    names = {entry["name"] for entry in client.get_model_repository_index()}
    assert "no_such_model" not in names  # Triton lists only what is in the repository


def test_a_config_that_does_not_parse_leaves_the_server_ready(server, client) -> None:
    with pytest.raises(InferenceServerException):
        client.load_model("badconfig")
    assert _ready_on_both(server, client) == (True, True)


def test_an_unloaded_model_does_not_count(server, client) -> None:
    client.load_model("other")
    client.unload_model("other")
    assert not client.is_model_ready("other")
    assert _ready_on_both(server, client) == (True, True)


def test_a_version_that_failed_to_load_counts_until_unloaded(server, client) -> None:
    with pytest.raises(InferenceServerException):
        client.load_model("broken")
    assert _ready_on_both(server, client) == (False, False)
    assert raw_request(server, "GET", "/v2/health/ready").status == 400
    client.unload_model("broken")
    assert _ready_on_both(server, client) == (True, True)


def test_a_model_that_fails_after_its_config_counts_until_unloaded(server, client) -> None:
    with pytest.raises(InferenceServerException, match="no version is available"):
        client.load_model("noversion")
    assert _ready_on_both(server, client) == (False, False)
    client.unload_model("noversion")
    assert _ready_on_both(server, client) == (True, True)
