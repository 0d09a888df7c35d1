"""Health, server/model metadata, model config and version-specific endpoints over HTTP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from openeas.testing.onnx_models import (
    ADD_SUB_CONFIG,
    write_add_sub_model,
    write_identity_model,
    write_model_config,
)
from tests.integration.conftest import raw_request, write_add_constant_model

VERSION_POLICIES = {
    # model name: (version_policy line or "", versions expected to be served)
    "vp_default": ("", [3]),
    "vp_all": ("version_policy: { all { } }", [1, 2, 3]),
    "vp_specific": ("version_policy: { specific { versions: [ 1, 3 ] } }", [1, 3]),
    "vp_latest": ("version_policy: { latest { num_versions: 2 } }", [2, 3]),
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("metadata-repo")
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
    for name, (policy, _) in VERSION_POLICIES.items():
        for version in (1, 2, 3):
            write_add_constant_model(root / name / str(version), float(version * 100))
        write_model_config(
            root / name,
            f"""
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
{policy}
""",
        )
    return root


@pytest.fixture(scope="module")
def server(launch, repo):
    return launch(repo, "--id=openeas-test")


# -- health ---------------------------------------------------------------------------


def test_live_and_ready(client, server):
    assert client.is_server_live()
    assert client.is_server_ready()
    for path in ("/v2/health/live", "/v2/health/ready"):
        response = raw_request(server, "GET", path)
        assert response.status == 200, response
        assert response.body == b""


def test_health_rejects_post(server):
    response = raw_request(server, "POST", "/v2/health/live", b"{}")
    assert response.status == 405
    response.error()


# -- server metadata ------------------------------------------------------------------


def test_server_metadata(client):
    metadata = client.get_server_metadata()
    assert metadata["name"] == "openeas-test"  # --id
    assert isinstance(metadata["version"], str) and metadata["version"]
    extensions = set(metadata["extensions"])
    for extension in (
        "binary_tensor_data",
        "classification",
        "model_repository",
        "model_configuration",
        "statistics",
        "parameters",
    ):
        assert extension in extensions, extension


def test_server_metadata_raw(server):
    response = raw_request(server, "GET", "/v2")
    assert response.status == 200
    assert response.headers["content-type"].startswith("application/json")
    assert set(response.json()) == {"name", "version", "extensions"}


# -- model metadata and config ---------------------------------------------------------


def test_model_metadata_batching_model(client):
    metadata = client.get_model_metadata("simple")
    assert metadata["name"] == "simple"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [
        {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 16]},
    ]
    assert metadata["outputs"] == [
        {"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 16]},
        {"name": "OUTPUT1", "datatype": "FP32", "shape": [-1, 16]},
    ]


def test_model_metadata_non_batching_model(client):
    metadata = client.get_model_metadata("nobatch")
    assert metadata["inputs"] == [{"name": "INPUT0", "datatype": "INT32", "shape": [2, 3]}]
    assert metadata["outputs"] == [{"name": "OUTPUT0", "datatype": "INT32", "shape": [2, 3]}]


def test_model_config_as_triton_prints_it(client):
    config = client.get_model_config("simple")
    assert config["name"] == "simple"
    assert config["platform"] == "onnxruntime_onnx"
    # int64 fields are JSON numbers (protobuf's JSON mapping would print strings)
    assert config["max_batch_size"] == 8
    assert config["input"][0]["name"] == "INPUT0"
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["input"][0]["dims"] == [16]
    assert config["output"][1]["name"] == "OUTPUT1"
    assert config["output"][1]["dims"] == [16]
    # defaults filled in the way Triton fills them
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert len(config["instance_group"]) == 1
    group = config["instance_group"][0]
    assert group["kind"] == "KIND_CPU"
    assert group["count"] == 1
    assert group["name"] == "simple_0"


def test_model_config_of_non_batching_model(client):
    config = client.get_model_config("nobatch")
    assert config["name"] == "nobatch"  # filled from the directory name
    assert config["max_batch_size"] == 0
    assert config["input"][0]["dims"] == [2, 3]


def test_model_ready(client):
    assert client.is_model_ready("simple")
    assert not client.is_model_ready("no_such_model")


def test_unknown_model_metadata_is_404(client, server):
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no_such_model")
    assert "no_such_model" in info.value.message()
    for path in ("/v2/models/no_such_model", "/v2/models/no_such_model/config"):
        response = raw_request(server, "GET", path)
        assert response.status == 404, response
        assert "no_such_model" in response.error()
    response = raw_request(server, "GET", "/v2/models/no_such_model/ready")
    assert response.status == 400


# -- versions -------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(VERSION_POLICIES))
def test_version_policy_selects_versions(client, model):
    served = VERSION_POLICIES[model][1]
    for version in (1, 2, 3):
        assert client.is_model_ready(model, str(version)) == (version in served), version
    metadata = client.get_model_metadata(model)
    assert sorted(metadata["versions"], key=int) == [str(v) for v in served]


@pytest.mark.parametrize("model", sorted(VERSION_POLICIES))
def test_infer_routes_to_requested_version(client, model):
    served = VERSION_POLICIES[model][1]
    data = np.array([1.0, 2.0], dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", [2], "FP32")
    inp.set_data_from_numpy(data)
    for version in served:
        result = client.infer(model, [inp], model_version=str(version))
        assert result.get_response()["model_version"] == str(version)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data + version * 100)
    # no version: the latest ready version answers
    result = client.infer(model, [inp])
    assert result.get_response()["model_version"] == str(max(served))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data + max(served) * 100)
    for version in {1, 2, 3} - set(served):
        with pytest.raises(InferenceServerException):
            client.infer(model, [inp], model_version=str(version))


def test_version_specific_endpoints(client, server):
    metadata = client.get_model_metadata("vp_all", "2")
    assert metadata["versions"] == ["2"]
    assert metadata["name"] == "vp_all"
    config = client.get_model_config("vp_all", "2")
    assert config["version_policy"] == {"all": {}}
    stats = client.get_inference_statistics("vp_all", "2")
    assert [(s["name"], s["version"]) for s in stats["model_stats"]] == [("vp_all", "2")]
    stats = client.get_inference_statistics("vp_all")
    assert sorted(s["version"] for s in stats["model_stats"]) == ["1", "2", "3"]
    for path in (
        "/v2/models/vp_all/versions/2",
        "/v2/models/vp_all/versions/2/ready",
        "/v2/models/vp_all/versions/2/config",
        "/v2/models/vp_all/versions/2/stats",
    ):
        assert raw_request(server, "GET", path).status == 200, path


def test_unserved_version_endpoints_fail(client, server):
    # vp_specific serves 1 and 3 only; version 9 does not exist at all
    for version in ("2", "9"):
        assert not client.is_model_ready("vp_specific", version)
        with pytest.raises(InferenceServerException):
            client.get_model_metadata("vp_specific", version)
        response = raw_request(server, "GET", f"/v2/models/vp_specific/versions/{version}")
        assert response.status in (400, 404, 503), response
        response.error()
    response = raw_request(server, "GET", "/v2/models/vp_specific/versions/abc")
    assert response.status == 400, response
    response.error()
