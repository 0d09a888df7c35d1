"""The tensorflow backend against a real server: GraphDef and SavedModel models.

Models are written once per module (:mod:`openeas.testing.framework_models`) and served
by one server; the real ``tritonclient`` (HTTP and gRPC) talks to it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from openeas.testing import framework_models as fm

pytest.importorskip(
    "tensorflow", reason="TensorFlow is not installed (pip install 'openeas[tensorflow]')"
)

GRAPHDEF_CONFIG = """
name: "{name}"
platform: "tensorflow_graphdef"
max_batch_size: 8
input [
  {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }},
  {{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }}
]
output [
  {{ name: "ops/add" data_type: TYPE_FP32 dims: [ 16 ] }},
  {{ name: "ops/sub:0" data_type: TYPE_FP32 dims: [ 16 ] }}
]
{extra}
"""

STRINGS_CONFIG = """
platform: "tensorflow_graphdef"
max_batch_size: 4
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } } ]
output [
  { name: "LENGTH" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } },
  { name: "UPPER" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } }
]
"""


# Only the sequence batcher: inputs and outputs come from the signature, where the
# control inputs START and READY are signature inputs too but must not become inputs.
SAVED_SEQUENCE_CONFIG = """
platform: "tensorflow_savedmodel"
sequence_batching {
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] }
  ]
}
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tf-repo")
    fm.write_tf_graphdef_add_sub(
        root, "tf_add_sub", config=GRAPHDEF_CONFIG.format(name="tf_add_sub", extra="")
    )
    fm.write_tf_graphdef_add_sub(
        root,
        "tf_batched",
        config=GRAPHDEF_CONFIG.format(
            name="tf_batched",
            extra="dynamic_batching { max_queue_delay_microseconds: 300000 }\n"
            'parameters { key: "TF_NUM_INTRA_THREADS" value { string_value: "1" } }',
        ),
    )
    # A config naming a tensor the graph does not have: fails to load, others still load.
    fm.write_tf_graphdef_add_sub(
        root,
        "tf_bad_name",
        config=GRAPHDEF_CONFIG.format(name="tf_bad_name", extra="").replace(
            '"ops/add"', '"ops/mul"'
        ),
    )
    fm.write_tf_graphdef_strings(root, "tf_strings", config=STRINGS_CONFIG)
    # Three inputs for a graph with two placeholders: Triton's count check.
    fm.write_tf_graphdef_add_sub(
        root,
        "tf_too_many_inputs",
        config=GRAPHDEF_CONFIG.format(name="tf_too_many_inputs", extra="").replace(
            "input [", 'input [ { name: "INPUT2" data_type: TYPE_FP32 dims: [ 16 ] },', 1
        ),
    )
    # No config.pbtxt: auto-completed from the SavedModel's serving_default signature.
    fm.write_tf_savedmodel_scale(root, "tf_saved")
    fm.write_tf_savedmodel_scale(
        root,
        "tf_saved_triple",
        config='platform: "tensorflow_savedmodel"\n'
        'parameters { key: "TF_SIGNATURE_DEF" value { string_value: "triple" } }\n',
    )
    # Sequence models: the control inputs are graph placeholders / signature inputs.
    fm.write_tf_savedmodel_sequence(root, "tf_saved_sequence", config=SAVED_SEQUENCE_CONFIG)

    def seq(name: str) -> str:
        return fm.SEQUENCE_CONFIG.format(name=name, dyna="")

    fm.write_tf_graphdef_sequence(
        root,
        "tf_seq_missing_control",
        config=seq("tf_seq_missing_control").replace('"READY"', '"BEGIN"'),
    )
    fm.write_tf_graphdef_sequence(
        root,
        "tf_seq_control_type",
        config=seq("tf_seq_control_type").replace(
            "CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ]",
            "CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ]",
        ),
    )
    # Implicit state is not something the tensorflow backend takes: a load error.
    stateful = seq("tf_seq_state").replace(
        "sequence_batching {",
        'sequence_batching {\n  state [ { input_name: "ACC_IN" output_name: "ACC_OUT" '
        "data_type: TYPE_INT32 dims: [ 1 ] } ]",
    )
    fm.write_tf_graphdef_sequence(root, "tf_seq_state", config=stateful)
    return root


@pytest.fixture(scope="module")
def server(launch, repo):
    return launch(repo, "--exit-on-error=false", "--strict-readiness=false", timeout=120)


def _http_inputs(a: np.ndarray, b: np.ndarray, binary: bool = True) -> list:
    inputs = [
        httpclient.InferInput("INPUT0", list(a.shape), "FP32"),
        httpclient.InferInput("INPUT1", list(b.shape), "FP32"),
    ]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    return inputs


def test_models_load_and_bad_tensor_name_is_reported(client):
    index = {m["name"]: m for m in client.get_model_repository_index()}
    for name in ("tf_add_sub", "tf_batched", "tf_saved", "tf_saved_triple", "tf_strings"):
        assert index[name]["state"] == "READY", index[name]
    bad = index["tf_bad_name"]
    assert bad["state"] == "UNAVAILABLE"
    assert "ops/mul" in bad["reason"] and "not a tensor of the graph" in bad["reason"]


def test_graphdef_metadata_and_config(client):
    meta = client.get_model_metadata("tf_add_sub")
    assert meta["platform"] == "tensorflow_graphdef"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("INPUT0", "FP32", [-1, 16]),
        ("INPUT1", "FP32", [-1, 16]),
    ]
    assert [t["name"] for t in meta["outputs"]] == ["ops/add", "ops/sub:0"]
    assert client.get_model_config("tf_add_sub")["backend"] in ("", "tensorflow")


def test_graphdef_infer_http_json_and_binary(client):
    rng = np.random.default_rng(1)
    a = rng.random((3, 16), dtype=np.float32)
    b = rng.random((3, 16), dtype=np.float32)
    for binary in (False, True):
        result = client.infer("tf_add_sub", _http_inputs(a, b, binary))
        np.testing.assert_allclose(result.as_numpy("ops/add"), a + b, rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("ops/sub:0"), a - b, rtol=1e-6)
    # Only the requested output comes back.
    result = client.infer(
        "tf_add_sub", _http_inputs(a, b), outputs=[httpclient.InferRequestedOutput("ops/sub:0")]
    )
    assert result.as_numpy("ops/add") is None
    np.testing.assert_allclose(result.as_numpy("ops/sub:0"), a - b, rtol=1e-6)


def test_graphdef_infer_grpc(grpc_client):
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.ones((2, 16), dtype=np.float32)
    inputs = [
        grpcclient.InferInput("INPUT0", [2, 16], "FP32"),
        grpcclient.InferInput("INPUT1", [2, 16], "FP32"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = grpc_client.infer("tf_add_sub", inputs)
    np.testing.assert_array_equal(result.as_numpy("ops/add"), a + b)
    np.testing.assert_array_equal(result.as_numpy("ops/sub:0"), a - b)
    meta = grpc_client.get_model_metadata("tf_add_sub", as_json=True)
    assert meta["platform"] == "tensorflow_graphdef"


def test_dynamic_batching_merges_concurrent_requests(server):
    client = httpclient.InferenceServerClient(server.http_url, concurrency=8)
    try:
        before = client.get_inference_statistics("tf_batched")["model_stats"][0]
        arrays = [np.full((1, 16), i, dtype=np.float32) for i in range(8)]
        pending = [
            client.async_infer("tf_batched", _http_inputs(x, np.ones_like(x))) for x in arrays
        ]
        results = [p.get_result(timeout=60) for p in pending]
        for x, result in zip(arrays, results, strict=True):
            np.testing.assert_array_equal(result.as_numpy("ops/add"), x + 1)
            np.testing.assert_array_equal(result.as_numpy("ops/sub:0"), x - 1)
        stats = client.get_inference_statistics("tf_batched")["model_stats"][0]
        inferences = stats["inference_count"] - before["inference_count"]
        executions = stats["execution_count"] - before["execution_count"]
        assert inferences == 8
        assert executions < inferences, stats
    finally:
        client.close()


def test_savedmodel_auto_complete(client):
    config = client.get_model_config("tf_saved")
    assert config["platform"] == "tensorflow_savedmodel"
    assert config["max_batch_size"] == 4
    assert "dynamic_batching" in config
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("x", "TYPE_FP32", [4])
    ]
    assert sorted((o["name"], o["dims"][0]) for o in config["output"]) == [
        ("scaled", 4),
        ("total", 1),
    ]


def test_savedmodel_infer_uses_restored_variables(client, grpc_client):
    x = np.array([[1, 2, 3, 4], [0.5, 0, -1, 2]], dtype=np.float32)
    inp = httpclient.InferInput("x", [2, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("tf_saved", [inp])
    np.testing.assert_allclose(result.as_numpy("scaled"), x * 2)
    np.testing.assert_allclose(result.as_numpy("total"), x.sum(axis=1, keepdims=True))
    ginp = grpcclient.InferInput("x", [2, 4], "FP32")
    ginp.set_data_from_numpy(x)
    result = grpc_client.infer("tf_saved_triple", [ginp])
    np.testing.assert_allclose(result.as_numpy("tripled"), x * 3)


def test_bad_inputs_get_clear_errors_and_server_keeps_serving(client):
    a = np.ones((1, 16), dtype=np.float32)
    wrong_type = [
        httpclient.InferInput("INPUT0", [1, 16], "INT32"),
        httpclient.InferInput("INPUT1", [1, 16], "FP32"),
    ]
    wrong_type[0].set_data_from_numpy(a.astype(np.int32))
    wrong_type[1].set_data_from_numpy(a)
    with pytest.raises(InferenceServerException, match="data-type is 'INT32'") as exc:
        client.infer("tf_add_sub", wrong_type)
    assert exc.value.status() == "400"
    with pytest.raises(InferenceServerException, match="unexpected shape for input 'INPUT0'"):
        client.infer(
            "tf_add_sub", _http_inputs(np.ones((1, 8), np.float32), np.ones((1, 8), np.float32))
        )
    with pytest.raises(InferenceServerException, match="batch-size must be <= 8"):
        big = np.ones((9, 16), np.float32)
        client.infer("tf_add_sub", _http_inputs(big, big))
    with pytest.raises(InferenceServerException, match="expected 2 inputs"):
        client.infer("tf_add_sub", _http_inputs(a, a)[:1])
    result = client.infer("tf_add_sub", _http_inputs(a, a))
    np.testing.assert_array_equal(result.as_numpy("ops/add"), a + a)


def test_bytes_tensors(client, grpc_client):
    text = np.array([[b"hello"], [b"tensorflow!"]], dtype=np.object_)
    inp = httpclient.InferInput("TEXT", [2, 1], "BYTES")
    inp.set_data_from_numpy(text)
    result = client.infer("tf_strings", [inp])
    np.testing.assert_array_equal(result.as_numpy("LENGTH"), [[5], [11]])
    assert result.as_numpy("UPPER").tolist() == [[b"HELLO"], [b"TENSORFLOW!"]]
    ginp = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    ginp.set_data_from_numpy(np.array([[b"grpc"]], dtype=np.object_))
    result = grpc_client.infer("tf_strings", [ginp])
    assert result.as_numpy("UPPER").tolist() == [[b"GRPC"]]


def test_savedmodel_sequence_controls_are_fed_not_auto_completed(client, grpc_client):
    config = client.get_model_config("tf_saved_sequence")
    assert [i["name"] for i in config["input"]] == ["INPUT"]
    assert [o["name"] for o in config["output"]] == ["OUTPUT"]
    answers = []
    for index, value in enumerate([5, 3, 4]):
        inp = grpcclient.InferInput("INPUT", [1, 1], "INT32")
        inp.set_data_from_numpy(np.array([[value]], dtype=np.int32))
        result = grpc_client.infer(
            "tf_saved_sequence",
            [inp],
            sequence_id=7,
            sequence_start=index == 0,
            sequence_end=index == 2,
        )
        answers.append(int(result.as_numpy("OUTPUT")[0][0]))
    assert answers == [6, 3, 4]  # READY * (INPUT + START)


def test_bad_sequence_controls_fail_to_load_with_the_reason(client):
    index = {m["name"]: m for m in client.get_model_repository_index()}
    missing = index["tf_seq_missing_control"]
    assert missing["state"] == "UNAVAILABLE"
    assert (
        "configuration specified sequence control 'BEGIN', but model does not provide that "
        "input" in missing["reason"]
    )
    stateful = index["tf_seq_state"]
    assert stateful["state"] == "UNAVAILABLE"
    assert "does not support implicit state" in stateful["reason"]
    wrong = index["tf_seq_control_type"]
    assert wrong["state"] == "UNAVAILABLE"
    assert (
        "sequence control 'START': the model expects TYPE_INT32 but the model configuration "
        "specifies data-type TYPE_FP32" in wrong["reason"]
    )


def test_graphdef_with_more_inputs_than_placeholders_fails_to_load(client):
    index = {m["name"]: m for m in client.get_model_repository_index()}
    model = index["tf_too_many_inputs"]
    assert model["state"] == "UNAVAILABLE"
    assert "configuration expects 3 inputs, model provides at most 2" in model["reason"]
