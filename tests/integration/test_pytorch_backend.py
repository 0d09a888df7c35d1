"""The pytorch backend against a real server: TorchScript models, Triton's naming rules.

Models are written once per module (:mod:`openeas.testing.framework_models`); the real
``tritonclient`` (HTTP and gRPC) talks to one server.  A second server, whose Python
cannot import torch, shows that a PyTorch model then fails to load with the extra to
install while the other models keep serving.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from openeas.testing import framework_models as fm
from openeas.testing.onnx_models import write_identity_model
from openeas.testing.server import start_server

pytest.importorskip("torch", reason="torch is not installed (pip install 'openeas[pytorch]')")

INDEXED_CONFIG = """
name: "{name}"
{platform}
max_batch_size: 8
input [
  {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "INPUT__1" data_type: TYPE_FP32 dims: [ -1 ] }}
]
output [
  {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "OUTPUT__1" data_type: TYPE_FP32 dims: [ -1 ] }}
]
{extra}
"""

# Inputs named after forward's arguments, listed in the opposite order: mapped by name.
NAMED_CONFIG = """
name: "torch_named"
backend: "pytorch"
max_batch_size: 0
input [
  { name: "b" data_type: TYPE_INT64 dims: [ 3 ] },
  { name: "a" data_type: TYPE_INT64 dims: [ 3 ] }
]
output [
  { name: "sum" data_type: TYPE_INT64 dims: [ 3 ] },
  { name: "difference" data_type: TYPE_INT64 dims: [ 3 ] }
]
"""

DICT_CONFIG = """
name: "torch_dict"
platform: "pytorch_libtorch"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [
  { name: "square" data_type: TYPE_FP32 dims: [ 2 ] },
  { name: "double" data_type: TYPE_FP32 dims: [ 2 ] }
]
"""


# Control inputs follow <name>__<index>: their index is their forward position.
SEQUENCE_CONFIG = """
name: "{name}"
backend: "pytorch"
max_batch_size: 4
sequence_batching {{
  control_input [
    {{ name: "{start}" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "READY__2" control [ {{ kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] }} ] }}
  ]
}}
input [ {{ name: "INPUT__0" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT__0" data_type: TYPE_INT32 dims: [ 1 ] }} ]
"""


# Implicit state: ACC_IN__1 is fed the ACC_OUT__1 of the sequence's previous request.
ACCUMULATOR_CONFIG = """
name: "torch_accumulator"
backend: "pytorch"
max_batch_size: 4
sequence_batching {
  control_input [
    { name: "START__2" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] }
  ]
  state [ { input_name: "ACC_IN__1" output_name: "ACC_OUT__1" data_type: TYPE_INT32 dims: [ 1 ] } ]
}
input [ { name: "INPUT__0" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("torch-repo")
    fm.write_torchscript_add_sub(
        root,
        "torch_add_sub",
        config=INDEXED_CONFIG.format(
            name="torch_add_sub", platform='platform: "pytorch_libtorch"', extra=""
        ),
    )
    fm.write_torchscript_add_sub(
        root,
        "torch_batched",
        config=INDEXED_CONFIG.format(
            name="torch_batched",
            platform='backend: "pytorch"',
            extra="dynamic_batching { max_queue_delay_microseconds: 300000 }\n"
            'parameters { key: "INTRA_OP_THREAD_COUNT" value { string_value: "1" } }',
        ),
    )
    fm.write_torchscript_add_sub(root, "torch_named", config=NAMED_CONFIG)
    fm.write_torchscript_dict_out(root, "torch_dict", config=DICT_CONFIG)
    # The model returns FP32 where the config says INT32: every request fails clearly.
    fm.write_torchscript_add_sub(
        root,
        "torch_wrong_type",
        config=INDEXED_CONFIG.format(
            name="torch_wrong_type", platform='backend: "pytorch"', extra=""
        ).replace('"OUTPUT__1" data_type: TYPE_FP32', '"OUTPUT__1" data_type: TYPE_INT32'),
    )
    # A file that is not TorchScript: fails to load, the others load.
    broken = root / "torch_broken"
    fm.write_torchscript_dict_out(
        root, "torch_broken", config=DICT_CONFIG.replace("torch_dict", "torch_broken")
    )
    (broken / "1" / "model.pt").write_bytes(b"not a torchscript archive")
    fm.write_torchscript_sequence(
        root,
        "torch_sequence",
        config=SEQUENCE_CONFIG.format(name="torch_sequence", start="START__1"),
    )
    fm.write_torchscript_accumulator(root, "torch_accumulator", config=ACCUMULATOR_CONFIG)
    # A control input without an index: Triton's PyTorch backend refuses it.
    fm.write_torchscript_sequence(
        root,
        "torch_seq_unindexed",
        config=SEQUENCE_CONFIG.format(name="torch_seq_unindexed", start="START"),
    )
    return root


@pytest.fixture(scope="module")
def server(launch, repo):
    return launch(repo, "--exit-on-error=false", "--strict-readiness=false", timeout=120)


def _inputs(module, arrays: dict[str, np.ndarray], datatype: str = "FP32") -> list:
    inputs = []
    for name, array in arrays.items():
        inp = module.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        inputs.append(inp)
    return inputs


def test_models_load_and_broken_file_is_reported(client):
    index = {m["name"]: m for m in client.get_model_repository_index()}
    for name in ("torch_add_sub", "torch_batched", "torch_named", "torch_dict", "torch_wrong_type"):
        assert index[name]["state"] == "READY", index[name]
    assert index["torch_broken"]["state"] == "UNAVAILABLE"
    assert "not a TorchScript model" in index["torch_broken"]["reason"]


def test_metadata(client, grpc_client):
    meta = client.get_model_metadata("torch_add_sub")
    assert meta["platform"] == "pytorch_libtorch"
    assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [
        ("INPUT__0", [-1, -1]),
        ("INPUT__1", [-1, -1]),
    ]
    gmeta = grpc_client.get_model_metadata("torch_named", as_json=True)
    assert [t["name"] for t in gmeta["outputs"]] == ["sum", "difference"]


def test_indexed_names_http_and_grpc(client, grpc_client):
    a = np.arange(10, dtype=np.float32).reshape(2, 5)
    b = np.full((2, 5), 0.5, dtype=np.float32)
    result = client.infer("torch_add_sub", _inputs(httpclient, {"INPUT__0": a, "INPUT__1": b}))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__1"), a - b)
    result = grpc_client.infer("torch_add_sub", _inputs(grpcclient, {"INPUT__1": b, "INPUT__0": a}))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__1"), a - b)


def test_names_of_forward_arguments_map_by_name(client):
    a = np.array([10, 20, 30], dtype=np.int64)
    b = np.array([1, 2, 3], dtype=np.int64)
    result = client.infer("torch_named", _inputs(httpclient, {"b": b, "a": a}, "INT64"))
    np.testing.assert_array_equal(result.as_numpy("sum"), a + b)
    np.testing.assert_array_equal(result.as_numpy("difference"), a - b)  # a - b, not b - a


def test_dict_outputs_by_name(grpc_client):
    x = np.array([[1, 2], [3, -4]], dtype=np.float32)
    result = grpc_client.infer("torch_dict", _inputs(grpcclient, {"x": x}))
    np.testing.assert_array_equal(result.as_numpy("square"), x * x)
    np.testing.assert_array_equal(result.as_numpy("double"), x * 2)


def test_dynamic_batching_merges_concurrent_requests(server):
    client = httpclient.InferenceServerClient(server.http_url, concurrency=8)
    try:
        before = client.get_inference_statistics("torch_batched")["model_stats"][0]
        arrays = [np.full((1, 4), i, dtype=np.float32) for i in range(8)]
        pending = [
            client.async_infer(
                "torch_batched", _inputs(httpclient, {"INPUT__0": x, "INPUT__1": np.ones_like(x)})
            )
            for x in arrays
        ]
        results = [p.get_result(timeout=60) for p in pending]
        for x, result in zip(arrays, results, strict=True):
            np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), x + 1)
        stats = client.get_inference_statistics("torch_batched")["model_stats"][0]
        inferences = stats["inference_count"] - before["inference_count"]
        executions = stats["execution_count"] - before["execution_count"]
        assert inferences == 8
        assert executions < inferences, stats
    finally:
        client.close()


def test_bad_inputs_and_wrong_output_type(client):
    a = np.ones((1, 3), dtype=np.float32)
    with pytest.raises(InferenceServerException, match="data-type is 'FP64'") as exc:
        client.infer(
            "torch_add_sub",
            _inputs(
                httpclient,
                {"INPUT__0": a.astype(np.float64), "INPUT__1": a.astype(np.float64)},
                "FP64",
            ),
        )
    assert exc.value.status() == "400"
    # Shapes the model cannot add: torch's error comes back, the server keeps serving.
    with pytest.raises(InferenceServerException, match="pytorch") as exc:
        client.infer(
            "torch_add_sub",
            _inputs(
                httpclient,
                {"INPUT__0": np.ones((1, 3), np.float32), "INPUT__1": np.ones((1, 4), np.float32)},
            ),
        )
    assert exc.value.status() == "500"
    with pytest.raises(
        InferenceServerException, match="unexpected datatype FP32 for inference output 'OUTPUT__1'"
    ):
        client.infer("torch_wrong_type", _inputs(httpclient, {"INPUT__0": a, "INPUT__1": a}))
    result = client.infer("torch_add_sub", _inputs(httpclient, {"INPUT__0": a, "INPUT__1": a}))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), a + a)


def test_without_torch_the_model_names_the_extra(tmp_path: Path, repo: Path):
    """A Python that cannot import torch: the PyTorch model fails, the ONNX one serves."""
    shim = tmp_path / "no-torch"
    (shim / "torch").mkdir(parents=True)
    (shim / "torch" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'torch'\", name='torch')\n"
    )
    models = tmp_path / "models"
    models.mkdir()
    fm.write_torchscript_dict_out(models, "torch_dict", config=DICT_CONFIG)
    write_identity_model(models / "identity_fp32" / "1")
    env = {
        "PYTHONPATH": os.pathsep.join([str(shim), *filter(None, [os.environ.get("PYTHONPATH")])])
    }
    server = start_server(
        models,
        "--exit-on-error=false",
        "--strict-readiness=false",
        log_path=tmp_path / "server.log",
        env=env,
        timeout=90,
    )
    try:
        client = httpclient.InferenceServerClient(server.http_url)
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["identity_fp32"]["state"] == "READY"
        assert index["torch_dict"]["state"] == "UNAVAILABLE"
        assert "pip install 'openeas[pytorch]'" in index["torch_dict"]["reason"]
        client.close()
    finally:
        server.stop()


def test_sequence_control_inputs_reach_forward_by_index(client, grpc_client):
    for protocol, (c, module) in {
        "http": (client, httpclient),
        "grpc": (grpc_client, grpcclient),
    }.items():
        answers = []
        for index, value in enumerate([5, 3, 4]):
            result = c.infer(
                "torch_sequence",
                _inputs(module, {"INPUT__0": np.array([[value]], np.int32)}, "INT32"),
                sequence_id=11 if protocol == "http" else 12,
                sequence_start=index == 0,
                sequence_end=index == 2,
            )
            answers.append(int(result.as_numpy("OUTPUT__0")[0][0]))
        assert answers == [6, 3, 4], protocol  # READY * (INPUT + START)


def test_unindexed_control_input_fails_to_load(client):
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["torch_seq_unindexed"]["state"] == "UNAVAILABLE"
    assert (
        "input 'START' does not follow <name>__<index> naming convention."
        in index["torch_seq_unindexed"]["reason"]
    )


def test_implicit_state_accumulates_per_sequence(client):
    """Two sequences interleaved: each one's state output comes back as its state input."""
    sequences = {21: [5, 3, 4], 22: [100, -1, -2]}
    answers: dict[int, list[int]] = {21: [], 22: []}
    for index in range(3):
        for sequence_id, values in sequences.items():
            result = client.infer(
                "torch_accumulator",
                _inputs(httpclient, {"INPUT__0": np.array([[values[index]]], np.int32)}, "INT32"),
                sequence_id=sequence_id,
                sequence_start=index == 0,
                sequence_end=index == 2,
            )
            assert result.as_numpy("ACC_OUT__1") is None  # the state stays on the server
            answers[sequence_id].append(int(result.as_numpy("OUTPUT__0")[0][0]))
    assert answers == {21: [5, 8, 12], 22: [100, 99, 97]}
