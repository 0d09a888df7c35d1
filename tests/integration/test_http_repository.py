"""The model repository extension over HTTP: explicit, none and poll control modes.

The tests of one server run in file order and share its state (what is loaded).
"""

from __future__ import annotations

import base64
import json
import shutil
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
from tests.integration.conftest import raw_request, wait_until, write_add_constant_model

ADD_CONSTANT_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""


def _simple_inputs(batch: int = 1):
    a = np.arange(16 * batch, dtype=np.float32).reshape(batch, 16)
    inputs = [httpclient.InferInput(n, [batch, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for inp in inputs:
        inp.set_data_from_numpy(a)
    return inputs, a


def _vector_input(values: list[float]):
    inp = httpclient.InferInput("INPUT0", [len(values)], "FP32")
    inp.set_data_from_numpy(np.array(values, dtype=np.float32))
    return inp


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("explicit-repo")
    write_add_sub_model(root / "simple" / "1", dims=(16,))
    write_model_config(root / "simple", ADD_SUB_CONFIG)
    write_identity_model(root / "ident" / "1", "INT32", (-1,))
    write_model_config(
        root / "ident",
        """
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ -1 ] } ]
""",
    )
    for version in (1, 2):
        write_add_constant_model(root / "plus" / str(version), float(version))
    write_model_config(root / "plus", ADD_CONSTANT_CONFIG)
    return root


@pytest.fixture(scope="module")
def server(launch, repo):
    return launch(repo, "--model-control-mode=explicit", "--load-model=simple")


# -- explicit mode --------------------------------------------------------------------


def test_startup_loads_only_requested_models(client):
    assert client.is_model_ready("simple")
    assert not client.is_model_ready("ident")
    assert not client.is_model_ready("plus")


def test_index_lists_every_model(client, server):
    index = client.get_model_repository_index()
    by_name = {entry["name"]: entry for entry in index}
    assert {"simple", "ident", "plus"} <= set(by_name)
    assert by_name["simple"]["state"] == "READY"
    assert by_name["simple"]["version"] == "1"
    assert "state" not in by_name["ident"]  # never loaded: name only, as Triton does

    response = raw_request(server, "POST", "/v2/repository/index", json.dumps({"ready": True}))
    assert response.status == 200, response
    ready = response.json()
    assert [entry["name"] for entry in ready] == ["simple"]
    assert all(entry["state"] == "READY" for entry in ready)

    response = raw_request(server, "POST", "/v2/repository/index", json.dumps({"ready": "yes"}))
    assert response.status == 400
    response.error()


def test_load_and_unload(client):
    client.load_model("ident")
    assert client.is_model_ready("ident")
    data = np.array([3, 1, 4, 1, 5], dtype=np.int32)
    inp = httpclient.InferInput("INPUT0", [5], "INT32")
    inp.set_data_from_numpy(data)
    np.testing.assert_array_equal(client.infer("ident", [inp]).as_numpy("OUTPUT0"), data)
    entry = {e["name"]: e for e in client.get_model_repository_index()}["ident"]
    assert entry["state"] == "READY"

    client.unload_model("ident")
    assert not client.is_model_ready("ident")
    with pytest.raises(InferenceServerException):
        client.infer("ident", [inp])
    entry = {e["name"]: e for e in client.get_model_repository_index()}["ident"]
    assert entry["state"] == "UNAVAILABLE"
    assert entry["reason"]

    client.load_model("ident")  # loads again after an unload
    assert client.is_model_ready("ident")
    client.unload_model("ident")


def test_unload_unknown_model_is_not_an_error(client):
    client.unload_model("never_loaded_or_known")  # Triton: success, nothing to do


def test_load_with_config_override(client):
    override = json.dumps(
        {
            "platform": "onnxruntime_onnx",
            "max_batch_size": 2,
            "input": [
                {"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]},
                {"name": "INPUT1", "data_type": "TYPE_FP32", "dims": [16]},
            ],
            "output": [
                {"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]},
                {"name": "OUTPUT1", "data_type": "TYPE_FP32", "dims": [16]},
            ],
        }
    )
    try:
        client.load_model("simple", config=override)
        assert client.is_model_ready("simple")
        assert client.get_model_config("simple")["max_batch_size"] == 2
        inputs, _ = _simple_inputs(batch=3)
        with pytest.raises(InferenceServerException) as info:
            client.infer("simple", inputs)
        assert info.value.status() == "400"
        inputs, a = _simple_inputs(batch=2)
        np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a + a)
    finally:
        client.load_model("simple")  # reload from config.pbtxt
    assert client.get_model_config("simple")["max_batch_size"] == 8
    inputs, a = _simple_inputs(batch=3)
    np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a + a)


def test_load_with_bad_config_override_fails(client):
    with pytest.raises(InferenceServerException):
        client.load_model("plus", config="{not json")
    assert not client.is_model_ready("plus")
    with pytest.raises(InferenceServerException):
        client.load_model("plus", config=json.dumps({"max_batch_size": "many"}))
    assert not client.is_model_ready("plus")


def test_failed_reload_keeps_the_loaded_model_serving(client):
    """Triton: if a reload fails for any reason, the loaded model stays loaded."""
    inputs, a = _simple_inputs()
    unparsable = "{not json"
    # parses, but does not match the ONNX model: fails when the instance is created
    mismatched = json.dumps(
        {
            "platform": "onnxruntime_onnx",
            "max_batch_size": 8,
            "input": [{"name": "WRONG", "data_type": "TYPE_FP32", "dims": [16]}],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]}],
        }
    )
    for config in (unparsable, mismatched):
        with pytest.raises(InferenceServerException):
            client.load_model("simple", config=config)
        assert client.is_model_ready("simple")
        np.testing.assert_array_equal(client.infer("simple", inputs).as_numpy("OUTPUT0"), a + a)
        entry = {e["name"]: e for e in client.get_model_repository_index()}["simple"]
        assert entry["state"] == "READY", entry
        assert client.get_model_config("simple")["input"][0]["name"] == "INPUT0"


def test_load_with_files(client, tmp_path):
    """``load_model(config=..., files=...)``: the model directory comes in the request."""
    write_add_constant_model(tmp_path / "1", 1000.0)
    model_bytes = (tmp_path / "1" / "model.onnx").read_bytes()
    config = json.dumps(
        {
            "backend": "onnxruntime",
            "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
        }
    )
    client.load_model("from_files", config=config, files={"file:1/model.onnx": model_bytes})
    assert client.is_model_ready("from_files")
    result = client.infer("from_files", [_vector_input([1.0, 2.0])])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [1001.0, 1002.0])
    assert client.get_model_config("from_files")["name"] == "from_files"
    client.unload_model("from_files")
    assert not client.is_model_ready("from_files")


def test_load_with_bad_files(client, server, tmp_path):
    write_add_constant_model(tmp_path / "1", 1.0)
    model_bytes = (tmp_path / "1" / "model.onnx").read_bytes()
    config = json.dumps({"backend": "onnxruntime"})
    # files without a config are refused
    body = {"parameters": {"file:1/model.onnx": base64.b64encode(model_bytes).decode()}}
    response = raw_request(server, "POST", "/v2/repository/models/other/load", json.dumps(body))
    assert response.status == 400, response
    assert "config" in response.error()
    # a file path that escapes the model directory is refused
    body = {
        "parameters": {"config": config, "file:../evil.onnx": base64.b64encode(b"x").decode()}
    }
    response = raw_request(server, "POST", "/v2/repository/models/evil/load", json.dumps(body))
    assert response.status == 400, response
    response.error()
    # contents that are not base64
    body = {"parameters": {"config": config, "file:1/model.onnx": "%%% not base64 %%%"}}
    response = raw_request(server, "POST", "/v2/repository/models/bad64/load", json.dumps(body))
    assert response.status == 400, response
    assert "base64" in response.error()
    for name in ("other", "evil", "bad64"):
        assert not client.is_model_ready(name)


def test_load_unknown_model_fails(client, server):
    with pytest.raises(InferenceServerException) as info:
        client.load_model("no_such_model")
    assert "no_such_model" in info.value.message()
    response = raw_request(server, "POST", "/v2/repository/models/no_such_model/load", b"")
    assert 400 <= response.status < 500, response
    assert "no_such_model" in response.error()
    assert not client.is_model_ready("no_such_model")


def test_model_name_with_dot_dot_is_400(client, server):
    for action in ("load", "unload"):
        response = raw_request(server, "POST", f"/v2/repository/models/../{action}", b"{}")
        assert response.status == 400, response
        assert ".." in response.error()
    with pytest.raises(InferenceServerException) as info:
        client.load_model("..")
    assert info.value.status() == "400"
    # an encoded path separator must not let a load escape the repository either
    response = raw_request(server, "POST", "/v2/repository/models/..%2Fsimple/load", b"{}")
    assert 400 <= response.status < 500, response
    assert client.is_model_ready("simple")


def test_repository_endpoints_need_post(server):
    assert raw_request(server, "GET", "/v2/repository/index").status == 405
    assert raw_request(server, "GET", "/v2/repository/models/simple/load").status == 405
    response = raw_request(server, "POST", "/v2/repository/models/simple/load", b"[1]")
    assert response.status == 400
    response.error()


def test_load_version_policy_from_disk(client):
    client.load_model("plus")
    result = client.infer("plus", [_vector_input([0.5])])
    assert result.get_response()["model_version"] == "2"  # latest only
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [2.5])
    assert not client.is_model_ready("plus", "1")
    client.unload_model("plus")


# -- none mode ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def none_server(launch, repo):
    return launch(repo)  # --model-control-mode=none is the default


def test_none_mode_loads_everything_and_rejects_load_unload(none_server):
    client = httpclient.InferenceServerClient(none_server.http_url)
    try:
        for name in ("simple", "ident", "plus"):
            assert client.is_model_ready(name), name
        for call in (client.load_model, client.unload_model):
            with pytest.raises(InferenceServerException) as info:
                call("simple")
            assert "explicit model load / unload is not allowed" in info.value.message()
        for action in ("load", "unload"):
            response = raw_request(
                none_server, "POST", f"/v2/repository/models/simple/{action}", b""
            )
            assert response.status == 503, response  # Triton: UNAVAILABLE
            response.error()
        assert client.is_model_ready("simple")  # nothing was unloaded
        index = client.get_model_repository_index()
        assert {e["name"] for e in index if e.get("state") == "READY"} == {
            "simple", "ident", "plus"
        }
    finally:
        client.close()


# -- poll mode ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def poll_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("poll-repo")
    for name in ("growing", "doomed"):
        write_add_constant_model(root / name / "1", 1.0)
        write_model_config(root / name, ADD_CONSTANT_CONFIG)
    return root


@pytest.fixture(scope="module")
def poll_server(launch, poll_repo):
    return launch(poll_repo, "--model-control-mode=poll", "--repository-poll-secs=0.2")


@pytest.fixture(scope="module")
def poll_client(poll_server):
    c = httpclient.InferenceServerClient(poll_server.http_url)
    yield c
    c.close()


def _atomic_add(staging: Path, target: Path) -> None:
    """Put a fully written directory in place in one step (as deployment tools do)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)


def test_poll_picks_up_new_version(poll_client, poll_repo, tmp_path):
    assert poll_client.is_model_ready("growing", "1")
    assert not poll_client.is_model_ready("growing", "2")
    staging = tmp_path / "2"
    write_add_constant_model(staging, 2.0)
    _atomic_add(staging, poll_repo / "growing" / "2")
    wait_until(lambda: poll_client.is_model_ready("growing", "2"), what="version 2 ready")
    # default policy (latest 1): version 2 serves, version 1 goes away
    result = poll_client.infer("growing", [_vector_input([10.0])])
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [12.0])
    wait_until(lambda: not poll_client.is_model_ready("growing", "1"), what="version 1 gone")


def test_poll_keeps_serving_when_a_new_version_fails(poll_client, poll_repo, tmp_path):
    assert poll_client.is_model_ready("growing", "2")
    staging = tmp_path / "3"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(b"this is not an ONNX model")
    _atomic_add(staging, poll_repo / "growing" / "3")

    def version_3_state() -> str:
        for entry in poll_client.get_model_repository_index():
            if entry["name"] == "growing" and entry.get("version") == "3":
                return entry["state"]
        return ""

    wait_until(lambda: version_3_state() == "UNAVAILABLE", what="version 3 to fail")
    assert poll_client.is_model_ready("growing", "2")
    result = poll_client.infer("growing", [_vector_input([10.0])])
    assert result.get_response()["model_version"] == "2"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [12.0])


def test_poll_unloads_removed_model(poll_client, poll_repo):
    assert poll_client.is_model_ready("doomed")
    shutil.rmtree(poll_repo / "doomed")
    wait_until(lambda: not poll_client.is_model_ready("doomed"), what="'doomed' unloaded")
    with pytest.raises(InferenceServerException):
        poll_client.infer("doomed", [_vector_input([1.0])])
    # the index drops it once the unload has finished
    wait_until(
        lambda: "doomed" not in {e["name"] for e in poll_client.get_model_repository_index()},
        what="'doomed' gone from the index",
    )


def test_poll_loads_new_model(poll_client, poll_repo, tmp_path):
    staging = tmp_path / "newcomer"
    write_add_constant_model(staging / "1", 5.0)
    write_model_config(staging, ADD_CONSTANT_CONFIG)
    _atomic_add(staging, poll_repo / "newcomer")
    wait_until(lambda: poll_client.is_model_ready("newcomer"), what="'newcomer' loaded")
    result = poll_client.infer("newcomer", [_vector_input([1.0])])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [6.0])


def test_poll_mode_rejects_explicit_load(poll_client):
    with pytest.raises(InferenceServerException) as info:
        poll_client.load_model("growing")
    assert "not allowed if polling is enabled" in info.value.message()
