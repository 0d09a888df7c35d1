"""Messages, statuses and metadata that clients match on, word for word as Triton 2.51's.

NVIDIA's client examples look for Triton's texts (an invalid version string, an unknown
model, a shape mismatch...); each case is checked over HTTP and gRPC with tritonclient.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from openeas.testing.onnx_models import (
    ADD_SUB_CONFIG,
    write_add_sub_model,
    write_identity_model,
    write_model_config,
)
from openeas.testing.server import ServerProcess
from tests.integration.conftest import raw_request

#: Triton 2.51's server extensions, in its order, less cuda_shared_memory and trace (this
#: server has neither) and system_shared_memory (listed with --allow-client-shm only).
EXTENSIONS = [
    "classification",
    "sequence",
    "model_repository",
    "model_repository(unload_dependents)",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
    "logging",
]
BATCH_NOTE = (
    "NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension "
    "to be prepended to each input shape. If you want to specify the full shape including "
    "the batch dim in your input dims config, try setting max_batch_size to zero. See the "
    "model configuration docs for more info on max_batch_size."
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("messages-repo")
    write_add_sub_model(root / "simple" / "1", dims=(16,))
    write_model_config(root / "simple", ADD_SUB_CONFIG)
    write_identity_model(root / "nobatch" / "1", "INT32", (2, 3))
    write_model_config(
        root / "nobatch",
        """
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 2, 3 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 2, 3 ] } ]
""",
    )
    return root


@pytest.fixture(scope="module")
def server(launch, repo) -> ServerProcess:
    return launch(repo)


class Client:
    """tritonclient of one protocol, with the status each error kind has there."""

    def __init__(self, protocol: str, server: ServerProcess) -> None:
        self.protocol = protocol
        self.module: Any = httpclient if protocol == "http" else grpcclient
        url = server.http_url if protocol == "http" else server.grpc_url
        self.client: Any = self.module.InferenceServerClient(url)

    def status(self, http: str, grpc: str) -> str:
        return http if self.protocol == "http" else f"StatusCode.{grpc}"

    def simple_inputs(self, shape: list[int], datatype: str = "FP32") -> list[Any]:
        data = np.zeros(shape, dtype=np.float32 if datatype == "FP32" else np.int32)
        inputs = []
        for name in ("INPUT0", "INPUT1"):
            tensor = self.module.InferInput(name, shape, datatype)
            tensor.set_data_from_numpy(data)
            inputs.append(tensor)
        return inputs


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[Client]:
    c = Client(request.param, server)
    yield c
    c.client.close()


def _fails(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


# -- metadata and start-up ------------------------------------------------------------------


def test_server_metadata_lists_triton_extensions_in_order(client: Client) -> None:
    metadata = client.client.get_server_metadata(
        **({} if client.protocol == "http" else {"as_json": True})
    )
    assert metadata["extensions"] == EXTENSIONS


def test_start_up_lines_name_the_bound_address(server: ServerProcess) -> None:
    log = server.log()
    assert f"Started HTTPService at 127.0.0.1:{server.http_port}\n" in log
    assert f"Started GRPCInferenceService at 127.0.0.1:{server.grpc_port}\n" in log
    assert f"Started Metrics Service at 127.0.0.1:{server.metrics_port}\n" in log


# -- versions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (
            "x",
            "failed to get model version from specified version string 'x' (details: stol), "
            "version should be an integral value > 0",
        ),
        (
            "-1",
            "invalid model version specified '-1' , version should be an integral value > 0",
        ),
    ],
)
def test_invalid_version_string(client: Client, version: str, message: str) -> None:
    bad_request = client.status("400", "INVALID_ARGUMENT")
    calls = [
        lambda: client.client.get_model_metadata("simple", version),
        lambda: client.client.get_model_config("simple", version),
        lambda: client.client.infer("simple", client.simple_inputs([1, 16]), model_version=version),
    ]
    if client.protocol == "grpc":  # HTTP's is_model_ready reads the status only (see below)
        calls.append(lambda: client.client.is_model_ready("simple", version))
    for call in calls:
        error = _fails(call)
        assert (error.message(), error.status()) == (message, bad_request)


def test_model_and_version_not_found(client: Client) -> None:
    not_found = client.status("404", "NOT_FOUND")
    error = _fails(lambda: client.client.get_model_metadata("no_such_model"))
    assert (error.message(), error.status()) == (
        "Request for unknown model: 'no_such_model' is not found",
        not_found,
    )
    error = _fails(lambda: client.client.infer("simple", client.simple_inputs([1, 16]), "7"))
    assert (error.message(), error.status()) == (
        "Request for unknown model: 'simple' version 7 is not found",
        not_found,
    )
    assert not client.client.is_model_ready("simple", "7")
    assert not client.client.is_model_ready("no_such_model")


def test_http_model_not_ready_answers_triton_error(server: ServerProcess) -> None:
    response = raw_request(server, "GET", "/v2/models/no_such_model/ready")
    assert (response.status, response.error()) == (400, "Model version not ready")
    response = raw_request(server, "GET", "/v2/models/simple/versions/x/ready")
    assert response.status == 400 and response.error().startswith(
        "failed to get model version from specified version string 'x'"
    )
    assert raw_request(server, "GET", "/v2/models/simple/ready").status == 200


# -- inputs and outputs -------------------------------------------------------------------


def test_unknown_input_and_output(client: Client) -> None:
    bad_request = client.status("400", "INVALID_ARGUMENT")
    inputs = client.simple_inputs([1, 16])
    extra = client.module.InferInput("EXTRA", [1], "FP32")
    extra.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    error = _fails(lambda: client.client.infer("simple", [*inputs, extra]))
    assert (error.message(), error.status()) == (
        "unexpected inference input 'EXTRA' for model 'simple'",
        bad_request,
    )
    outputs = [client.module.InferRequestedOutput("NOPE")]
    error = _fails(lambda: client.client.infer("simple", inputs, outputs=outputs))
    assert error.message() == "unexpected inference output 'NOPE' for model 'simple'"


def test_missing_input(client: Client) -> None:
    error = _fails(lambda: client.client.infer("simple", client.simple_inputs([1, 16])[:1]))
    assert error.message() == (
        "expected 2 inputs but got 1 inputs for model 'simple'. Got input(s) ['INPUT0'], but "
        "missing required input(s) ['INPUT1']. Please provide all required input(s)."
    )


def test_shape_and_datatype_mismatch(client: Client) -> None:
    bad_request = client.status("400", "INVALID_ARGUMENT")
    error = _fails(lambda: client.client.infer("simple", client.simple_inputs([1, 8])))
    assert (error.message(), error.status()) == (
        "unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], got "
        f"[1,8]. {BATCH_NOTE}",
        bad_request,
    )
    tensor = client.module.InferInput("INPUT0", [3, 2], "INT32")
    tensor.set_data_from_numpy(np.zeros((3, 2), dtype=np.int32))
    error = _fails(lambda: client.client.infer("nobatch", [tensor]))
    assert error.message() == (
        "unexpected shape for input 'INPUT0' for model 'nobatch'. Expected [2,3], got [3,2]. "
    )
    error = _fails(lambda: client.client.infer("simple", client.simple_inputs([1, 16], "INT32")))
    assert (error.message(), error.status()) == (
        "inference input 'INPUT0' data-type is 'INT32', but model 'simple' expects 'FP32'",
        bad_request,
    )
