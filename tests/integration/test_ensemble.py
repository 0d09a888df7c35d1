"""Ensemble models (``platform: "ensemble"``) through the real tritonclient, HTTP and gRPC.

The ``pipeline`` ensemble doubles both inputs with the ``scale_python`` Python model (two
independent steps) and feeds the results to the ONNX ``simple`` add/sub model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from openeas.testing.onnx_models import ADD_SUB_CONFIG, write_add_sub_model, write_model_config
from tests.integration.conftest import copy_test_model

pytestmark = pytest.mark.python_backend

FP32_16 = 'data_type: TYPE_FP32 dims: [ 16 ]'

# The add/sub step comes first in the file: steps run in dataflow order, not file order.
PIPELINE_CONFIG = f"""
name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [ {{ name: "A" {FP32_16} }}, {{ name: "B" {FP32_16} }} ]
output [
  {{ name: "SUM" {FP32_16} }},
  {{ name: "DIFF" {FP32_16} }},
  {{ name: "A2" {FP32_16} }}
]
ensemble_scheduling {{
  step [
    {{
      model_name: "simple"
      model_version: -1
      input_map [ {{ key: "INPUT0" value: "A2" }}, {{ key: "INPUT1" value: "B2" }} ]
      output_map [ {{ key: "OUTPUT0" value: "SUM" }}, {{ key: "OUTPUT1" value: "DIFF" }} ]
    }},
    {{
      model_name: "scale_python"
      model_version: -1
      input_map {{ key: "INPUT0" value: "A" }}
      output_map {{ key: "OUTPUT0" value: "A2" }}
    }},
    {{
      model_name: "scale_python"
      model_version: 1
      input_map {{ key: "INPUT0" value: "B" }}
      output_map {{ key: "OUTPUT0" value: "B2" }}
    }}
  ]
}}
"""

FAILING_CONFIG = """
name: "failing"
platform: "ensemble"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] } ]
ensemble_scheduling {
  step [ {
    model_name: "error_response"
    model_version: -1
    input_map { key: "INPUT0" value: "X" }
    output_map { key: "OUTPUT0" value: "Y" }
  } ]
}
"""


def _single_step_ensemble(name: str, steps: str, output: str = "OUT") -> str:
    return f"""
name: "{name}"
platform: "ensemble"
max_batch_size: 8
input [ {{ name: "A" {FP32_16} }} ]
output [ {{ name: "{output}" {FP32_16} }} ]
ensemble_scheduling {{ step [ {steps} ] }}
"""


BAD_CONFIGS = {
    "bad_unknown": (
        _single_step_ensemble(
            "bad_unknown",
            '{ model_name: "no_such_model" model_version: -1 '
            'input_map { key: "INPUT0" value: "A" } output_map { key: "OUTPUT0" value: "OUT" } }',
        ),
        ["no_such_model", "not in the repository"],
    ),
    "bad_unproduced": (
        _single_step_ensemble(
            "bad_unproduced",
            '{ model_name: "simple" model_version: -1 '
            'input_map [ { key: "INPUT0" value: "A" }, { key: "INPUT1" value: "NOWHERE" } ] '
            'output_map { key: "OUTPUT0" value: "OUT" } }',
        ),
        ["step 0 (model 'simple')", "'NOWHERE'", "neither an ensemble input nor produced"],
    ),
    "bad_cycle": (
        _single_step_ensemble(
            "bad_cycle",
            '{ model_name: "scale_python" model_version: -1 '
            'input_map { key: "INPUT0" value: "T1" } output_map { key: "OUTPUT0" value: "OUT" } },'
            '{ model_name: "scale_python" model_version: -1 '
            'input_map { key: "INPUT0" value: "OUT" } output_map { key: "OUTPUT0" value: "T1" } }',
        ),
        ["cycle", "step 0 (model 'scale_python')", "step 1 (model 'scale_python')"],
    ),
    "bad_output": (
        _single_step_ensemble(
            "bad_output",
            '{ model_name: "scale_python" model_version: -1 '
            'input_map { key: "INPUT0" value: "A" } output_map { key: "OUTPUT0" value: "T" } }',
        ),
        ["ensemble output 'OUT' is not produced by any step"],
    ),
}


def _write_repo(repo: Path, bad: bool = False) -> Path:
    write_add_sub_model(repo / "simple" / "1")
    write_model_config(repo / "simple", ADD_SUB_CONFIG)
    copy_test_model(repo, "scale_python")
    copy_test_model(repo, "error_response")
    configs = {"pipeline": PIPELINE_CONFIG, "failing": FAILING_CONFIG}
    if bad:
        configs |= {name: config for name, (config, _) in BAD_CONFIGS.items()}
    for name, config in configs.items():
        (repo / name / "1").mkdir(parents=True)
        write_model_config(repo / name, config)
    return repo


@pytest.fixture(scope="module")
def server(launch, tmp_path_factory):
    return launch(_write_repo(tmp_path_factory.mktemp("ensemble_repo")))


@pytest.fixture(scope="module")
def explicit_server(launch, tmp_path_factory):
    repo = _write_repo(tmp_path_factory.mktemp("ensemble_explicit_repo"), bad=True)
    return launch(repo, "--model-control-mode=explicit")


def _data(batch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    a = np.arange(batch * 16, dtype=np.float32).reshape(batch, 16)
    b = np.full((batch, 16), 0.5, dtype=np.float32)
    return a, b


def _http_inputs(a: np.ndarray, b: np.ndarray) -> list[httpclient.InferInput]:
    inputs = [
        httpclient.InferInput("A", list(a.shape), "FP32"),
        httpclient.InferInput("B", list(b.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def _grpc_inputs(a: np.ndarray, b: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = [
        grpcclient.InferInput("A", list(a.shape), "FP32"),
        grpcclient.InferInput("B", list(b.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs


def _success_count(client: httpclient.InferenceServerClient, model: str) -> int:
    stats = client.get_inference_statistics(model)["model_stats"]
    return sum(s["inference_stats"]["success"]["count"] for s in stats)


# -- serving --------------------------------------------------------------------------


def test_pipeline_over_http(server):
    client = httpclient.InferenceServerClient(server.http_url)
    a, b = _data()
    result = client.infer("pipeline", _http_inputs(a, b))
    np.testing.assert_allclose(result.as_numpy("SUM"), 2 * a + 2 * b)
    np.testing.assert_allclose(result.as_numpy("DIFF"), 2 * a - 2 * b)
    np.testing.assert_allclose(result.as_numpy("A2"), 2 * a)
    response = result.get_response()
    assert response["model_name"] == "pipeline"
    assert response["model_version"] == "1"


def test_pipeline_over_grpc(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    a, b = _data(batch=3)
    result = client.infer("pipeline", _grpc_inputs(a, b))
    np.testing.assert_allclose(result.as_numpy("SUM"), 2 * a + 2 * b)
    np.testing.assert_allclose(result.as_numpy("DIFF"), 2 * a - 2 * b)


def test_only_requested_outputs_are_returned(server):
    client = httpclient.InferenceServerClient(server.http_url)
    a, b = _data(batch=1)
    result = client.infer(
        "pipeline", _http_inputs(a, b), outputs=[httpclient.InferRequestedOutput("DIFF")]
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["DIFF"]
    np.testing.assert_allclose(result.as_numpy("DIFF"), 2 * a - 2 * b)


def test_concurrent_requests(server):
    import concurrent.futures

    def one(i: int) -> None:
        client = httpclient.InferenceServerClient(server.http_url)
        a = np.full((1, 16), float(i), dtype=np.float32)
        b = np.ones((1, 16), dtype=np.float32)
        result = client.infer("pipeline", _http_inputs(a, b))
        np.testing.assert_allclose(result.as_numpy("SUM"), 2 * a + 2)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(32)))


def test_statistics_count_the_composing_models(server):
    client = httpclient.InferenceServerClient(server.http_url)
    before = {m: _success_count(client, m) for m in ("pipeline", "scale_python", "simple")}
    a, b = _data()
    client.infer("pipeline", _http_inputs(a, b))
    after = {m: _success_count(client, m) for m in ("pipeline", "scale_python", "simple")}
    assert after["pipeline"] == before["pipeline"] + 1
    assert after["scale_python"] == before["scale_python"] + 2
    assert after["simple"] == before["simple"] + 1


def test_metadata_and_config(server):
    client = httpclient.InferenceServerClient(server.http_url)
    metadata = client.get_model_metadata("pipeline")
    assert metadata["platform"] == "ensemble"
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("A", "FP32", [-1, 16]),
        ("B", "FP32", [-1, 16]),
    ]
    assert [t["name"] for t in metadata["outputs"]] == ["SUM", "DIFF", "A2"]
    config = client.get_model_config("pipeline")
    assert config["platform"] == "ensemble"
    assert len(config["ensemble_scheduling"]["step"]) == 3
    grpc_metadata = grpcclient.InferenceServerClient(server.grpc_url).get_model_metadata(
        "pipeline", as_json=True
    )
    assert grpc_metadata["platform"] == "ensemble"


def test_failing_step_fails_the_request(server):
    x = np.ones(4, dtype=np.float32)
    http = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("X", [4], "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="model 'error_response'") as info:
        http.infer("failing", [inp])
    assert "rejects 4 values" in info.value.message()
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    ginp = grpcclient.InferInput("X", [4], "FP32")
    ginp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="model 'error_response'"):
        grpc.infer("failing", [ginp])
    # the server keeps serving
    a, b = _data()
    np.testing.assert_allclose(
        http.infer("pipeline", _http_inputs(a, b)).as_numpy("SUM"), 2 * a + 2 * b
    )


def test_invalid_request_is_refused_before_any_step(server):
    client = httpclient.InferenceServerClient(server.http_url)
    inp = httpclient.InferInput("A", [1, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="missing required input"):
        client.infer("pipeline", [inp])


def test_index_shows_the_ensemble(server):
    client = httpclient.InferenceServerClient(server.http_url)
    index = {e["name"]: e for e in client.get_model_repository_index()}
    assert index["pipeline"]["state"] == "READY"
    assert index["failing"]["state"] == "READY"


# -- explicit control mode ------------------------------------------------------------


def test_explicit_load_loads_the_composing_models(explicit_server):
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    assert not client.is_model_ready("scale_python")
    client.load_model("pipeline")
    assert client.is_model_ready("pipeline")
    assert client.is_model_ready("scale_python")
    assert client.is_model_ready("simple")
    a, b = _data()
    result = client.infer("pipeline", _http_inputs(a, b))
    np.testing.assert_allclose(result.as_numpy("SUM"), 2 * a + 2 * b)


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_graphs_are_load_errors(explicit_server, name):
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    with pytest.raises(InferenceServerException) as info:
        client.load_model(name)
    for part in BAD_CONFIGS[name][1]:
        assert part in info.value.message()
    entry = next(e for e in client.get_model_repository_index() if e["name"] == name)
    assert entry["state"] == "UNAVAILABLE"
    for part in BAD_CONFIGS[name][1]:
        assert part in entry["reason"]
    assert not client.is_model_ready(name)


def test_unloaded_composing_model_fails_requests_cleanly(explicit_server):
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    client.load_model("pipeline")
    client.unload_model("scale_python")
    assert client.is_model_ready("pipeline")
    a, b = _data()
    with pytest.raises(InferenceServerException, match="model 'scale_python'"):
        client.infer("pipeline", _http_inputs(a, b))
    client.load_model("scale_python")
    result = client.infer("pipeline", _http_inputs(a, b))
    np.testing.assert_allclose(result.as_numpy("DIFF"), 2 * a - 2 * b)


def test_unload_dependents_of_a_composing_model(explicit_server):
    client = grpcclient.InferenceServerClient(explicit_server.grpc_url)
    client.load_model("pipeline")
    assert client.is_model_ready("pipeline")
    client.unload_model("simple", unload_dependents=True)
    assert not client.is_model_ready("simple")
    assert not client.is_model_ready("pipeline")
    # the other composing model is not a dependent of "simple"
    assert client.is_model_ready("scale_python")
    index = {e["name"]: e for e in client.get_model_repository_index(as_json=True)["models"]}
    assert index["pipeline"]["state"] == "UNAVAILABLE"


def test_unload_dependents_of_an_ensemble(explicit_server):
    client = httpclient.InferenceServerClient(explicit_server.http_url)
    client.load_model("pipeline")
    client.load_model("failing")
    client.unload_model("pipeline", unload_dependents=True)
    assert not client.is_model_ready("pipeline")
    assert not client.is_model_ready("scale_python")
    assert not client.is_model_ready("simple")
    assert client.is_model_ready("failing")
    assert client.is_model_ready("error_response")
    client.unload_model("failing")
    assert client.is_model_ready("error_response")
