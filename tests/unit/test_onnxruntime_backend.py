"""Unit tests of the onnxruntime backend on tiny ONNX models built in the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from openeas.protocol.errors import InternalError, InvalidArgument, Unavailable
from openeas.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor
from openeas.server.backends import get_backend
from openeas.server.backends.base import ExecTiming, ModelContext
from openeas.server.backends.onnxruntime import (
    OnnxRuntimeBackend,
    OnnxRuntimeInstance,
    graph_optimization_level,
)
from openeas.server.repository.config import ModelConfig, parse_config_text
from openeas.testing.onnx_models import ADD_SUB_CONFIG, write_add_sub_model, write_identity_model

# The models are built with the onnx package (a dev dependency).
pytest.importorskip("onnx")


@pytest.fixture()
def backend() -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend()


def load(
    backend: OnnxRuntimeBackend,
    model_dir: Path,
    config: ModelConfig,
    backend_config: dict[str, str] | None = None,
    strict: bool = True,
    version: int = 1,
) -> OnnxRuntimeInstance:
    backend_config = backend_config or {}
    if not strict:
        backend.auto_complete_config(config, model_dir, version, backend_config)
    context = ModelContext(config.name, version, config, model_dir, backend_config)
    return backend.create_instance(context, f"{config.name}_0_0", 0)


def add_sub_request(
    batch: int,
    seed: int = 0,
    outputs=None,
    dtype=np.float32,
    datatype: str = "FP32",
    dims: tuple[int, ...] = (16,),
) -> InferRequest:
    rng = np.random.default_rng(seed)
    shape = (batch, *dims)
    a = (rng.random(shape) * 10).astype(dtype)
    b = (rng.random(shape) * 10).astype(dtype)
    return InferRequest(
        model_name="simple",
        id=f"req{seed}",
        inputs=[
            Tensor("INPUT0", datatype, list(shape), a),
            Tensor("INPUT1", datatype, list(shape), b),
        ],
        outputs=outputs,
    )


def check_add_sub(request: InferRequest, response) -> None:
    assert isinstance(response, InferResponse), response
    a, b = request.inputs[0].data, request.inputs[1].data
    out0, out1 = response.output("OUTPUT0"), response.output("OUTPUT1")
    assert out0.shape == list(a.shape) and out1.shape == list(a.shape)
    np.testing.assert_allclose(out0.data, a + b, rtol=1e-3)
    np.testing.assert_allclose(out1.data, a - b, rtol=1e-3)


def test_registered_under_its_name() -> None:
    assert isinstance(get_backend("onnxruntime"), OnnxRuntimeBackend)


# -- auto-complete ----------------------------------------------------------------------


def test_auto_complete_fills_batching_and_io(tmp_path: Path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    config = parse_config_text('name: "simple"\nbackend: "onnxruntime"')
    backend.auto_complete_config(config, model_dir, 1, {})
    assert config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    assert [(io.name, io.data_type, list(io.dims)) for io in config.input] == [
        ("INPUT0", 11, [16]),
        ("INPUT1", 11, [16]),
    ]  # 11 == TYPE_FP32
    assert [(io.name, list(io.dims)) for io in config.output] == [
        ("OUTPUT0", [16]),
        ("OUTPUT1", [16]),
    ]
    assert not any(io.HasField("reshape") for io in config.input)


def test_auto_complete_uses_default_max_batch_size_from_backend_config(tmp_path, backend):
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    config = parse_config_text('name: "simple"')
    backend.auto_complete_config(config, model_dir, 1, {"default-max-batch-size": "16"})
    assert config.max_batch_size == 16


def test_auto_complete_keeps_explicit_max_batch_size_and_scheduler(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    config = parse_config_text('name: "simple"\nmax_batch_size: 1')
    backend.auto_complete_config(config, model_dir, 1, {})
    assert config.max_batch_size == 1
    assert not config.HasField("dynamic_batching")  # only added when max_batch_size > 1

    config = parse_config_text('name: "simple"\nmax_batch_size: 8\nsequence_batching {}')
    backend.auto_complete_config(config, model_dir, 1, {})
    assert config.max_batch_size == 8
    assert not config.HasField("dynamic_batching")
    assert [list(io.dims) for io in config.input] == [[16], [16]]


def test_auto_complete_of_a_model_without_batch_dimension(tmp_path, backend) -> None:
    model_dir = tmp_path / "nobatch"
    write_add_sub_model(model_dir / "1", batch=False, dims=(2, 3))
    config = parse_config_text('name: "nobatch"')
    backend.auto_complete_config(config, model_dir, 1, {})
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert [list(io.dims) for io in config.input] == [[2, 3], [2, 3]]

    config = parse_config_text('name: "nobatch"\nmax_batch_size: 4')
    with pytest.raises(InvalidArgument, match="model does not support batching"):
        backend.auto_complete_config(config, model_dir, 1, {})


def test_auto_complete_of_a_scalar_model(tmp_path, backend) -> None:
    model_dir = tmp_path / "scalar"
    write_identity_model(model_dir / "1", "INT32", ())
    config = parse_config_text('name: "scalar"')
    instance = load(backend, model_dir, config, strict=False)
    assert config.max_batch_size == 0
    assert [list(io.dims) for io in config.input] == [[1]]
    assert not config.input[0].HasField("reshape")
    data = np.array([7], dtype=np.int32)
    [resp] = instance.execute(
        [InferRequest("scalar", inputs=[Tensor("INPUT0", "INT32", [1], data)])], ExecTiming()
    )
    assert resp.output("OUTPUT0").shape == [1]
    assert resp.output("OUTPUT0").data.tolist() == [7]


def test_auto_complete_is_skipped_when_io_is_given(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    config = parse_config_text(ADD_SUB_CONFIG.replace("max_batch_size: 8", ""))
    before = config.SerializeToString()
    backend.auto_complete_config(config, model_dir, 1, {})
    assert config.SerializeToString() == before


def test_auto_complete_fills_only_missing_outputs(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    config = parse_config_text("""
        name: "simple"
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
                { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
    """)
    backend.auto_complete_config(config, model_dir, 1, {})
    assert len(config.input) == 2
    assert [io.name for io in config.output] == ["OUTPUT0", "OUTPUT1"]
    assert config.max_batch_size == 4


# -- execution --------------------------------------------------------------------------


def test_execute_single_request(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    instance = load(backend, model_dir, parse_config_text(ADD_SUB_CONFIG))
    req = add_sub_request(1)
    timing = ExecTiming()
    [resp] = instance.execute([req], timing)
    check_add_sub(req, resp)
    assert resp.model_name == "simple" and resp.model_version == "1" and resp.id == "req0"
    assert resp.output("OUTPUT0").datatype == "FP32"
    assert timing.compute_infer_ns > 0


def test_execute_batches_requests_of_different_sizes(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    instance = load(backend, model_dir, parse_config_text('name: "simple"'), strict=False)
    reqs = [add_sub_request(1, seed=1), add_sub_request(2, seed=2), add_sub_request(1, seed=3)]
    results = instance.execute(reqs, ExecTiming())
    for req, resp in zip(reqs, results, strict=True):
        check_add_sub(req, resp)


def test_execute_returns_only_requested_outputs(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    instance = load(backend, model_dir, parse_config_text(ADD_SUB_CONFIG))
    reqs = [
        add_sub_request(2, seed=1, outputs=[RequestedOutput("OUTPUT1")]),
        add_sub_request(1, seed=2, outputs=[RequestedOutput("OUTPUT1")]),
    ]
    results = instance.execute(reqs, ExecTiming())
    for req, resp in zip(reqs, results, strict=True):
        assert [t.name for t in resp.outputs] == ["OUTPUT1"]
        np.testing.assert_allclose(
            resp.outputs[0].data, req.inputs[0].data - req.inputs[1].data, rtol=1e-5
        )


@pytest.mark.parametrize(
    ("datatype", "dtype"),
    [("INT32", np.int32), ("FP16", np.float16), ("INT64", np.int64), ("FP64", np.float64)],
)
def test_execute_other_datatypes(tmp_path, backend, datatype, dtype) -> None:
    model_dir = tmp_path / "typed"
    write_add_sub_model(model_dir / "1", dtype=datatype)
    config = parse_config_text('name: "typed"')
    instance = load(backend, model_dir, config, strict=False)
    reqs = [
        add_sub_request(1, seed=1, dtype=dtype, datatype=datatype),
        add_sub_request(3, seed=2, dtype=dtype, datatype=datatype),
    ]
    results = instance.execute(reqs, ExecTiming())
    for req, resp in zip(reqs, results, strict=True):
        check_add_sub(req, resp)
        assert resp.output("OUTPUT0").datatype == datatype
        assert resp.output("OUTPUT0").data.dtype == dtype


def test_execute_model_without_batch_dimension(tmp_path, backend) -> None:
    model_dir = tmp_path / "nobatch"
    write_add_sub_model(model_dir / "1", batch=False, dims=(4,))
    config = parse_config_text('name: "nobatch"')
    instance = load(backend, model_dir, config, strict=False)
    assert config.max_batch_size == 0
    reqs = []
    for seed in range(3):
        req = add_sub_request(1, seed=seed)
        for tensor in req.inputs:
            tensor.data = tensor.data[0, :4].copy()
            tensor.shape = [4]
        reqs.append(req)
    results = instance.execute(reqs, ExecTiming())
    for req, resp in zip(reqs, results, strict=True):
        check_add_sub(req, resp)


def test_execute_string_identity(tmp_path, backend) -> None:
    model_dir = tmp_path / "strings"
    write_identity_model(model_dir / "1", "BYTES", (-1, 2))
    config = parse_config_text('name: "strings"')
    instance = load(backend, model_dir, config, strict=False)
    assert config.max_batch_size == 4
    assert config.input[0].data_type == 13  # TYPE_STRING

    def make(rows):
        data = np.array(rows, dtype=object)
        return InferRequest("strings", inputs=[Tensor("INPUT0", "BYTES", list(data.shape), data)])

    reqs = [make([[b"hello", "wörld".encode()]]), make([[b"a", b""], [b"c", b"d"]])]
    results = instance.execute(reqs, ExecTiming())
    for req, resp in zip(reqs, results, strict=True):
        out = resp.output("OUTPUT0")
        assert out.datatype == "BYTES"
        assert out.data.dtype == object
        assert out.data.tolist() == req.inputs[0].data.tolist()

    bad = make([[b"\xff\xfe", b"x"]])
    [result] = instance.execute([bad], ExecTiming())
    assert isinstance(result, InvalidArgument) and "UTF-8" in str(result)


def test_runtime_error_becomes_internal_error_per_request(tmp_path, backend) -> None:
    model_dir = tmp_path / "dyn"
    write_add_sub_model(model_dir / "1", dims=(-1,))
    config = parse_config_text('name: "dyn"')
    instance = load(backend, model_dir, config, strict=False)
    assert [list(io.dims) for io in config.input] == [[-1], [-1]]
    req = add_sub_request(1, dims=(3,))
    req.inputs[1] = Tensor("INPUT1", "FP32", [1, 4], np.ones((1, 4), np.float32))
    good = add_sub_request(1, dims=(5,), seed=3)
    [result] = instance.execute([req], ExecTiming())
    assert isinstance(result, InternalError)
    assert str(result).startswith("onnx runtime error ")
    assert "broadcast" in str(result)
    # A good request next to it still works: they cannot be merged, so each runs alone.
    results = instance.execute([req, good], ExecTiming())
    assert isinstance(results[0], InternalError)
    check_add_sub(good, results[1])


def test_model_path_may_be_a_directory(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1" / "model.onnx")
    assert (model_dir / "1" / "model.onnx" / "model.onnx").is_file()
    instance = load(backend, model_dir, parse_config_text('name: "simple"'), strict=False)
    req = add_sub_request(2)
    check_add_sub(req, instance.execute([req], ExecTiming())[0])


def test_default_model_filename(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1", filename="other.onnx")
    config = parse_config_text(ADD_SUB_CONFIG + 'default_model_filename: "other.onnx"')
    instance = load(backend, model_dir, config)
    req = add_sub_request(1)
    check_add_sub(req, instance.execute([req], ExecTiming())[0])


def test_missing_model_file_is_unavailable(tmp_path, backend) -> None:
    (tmp_path / "simple" / "1").mkdir(parents=True)
    with pytest.raises(Unavailable, match="unable to find"):
        load(backend, tmp_path / "simple", parse_config_text(ADD_SUB_CONFIG))


def test_finalize_releases_the_session(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    instance = load(backend, model_dir, parse_config_text(ADD_SUB_CONFIG))
    instance.finalize()
    assert instance.session is None


# -- validation on load -----------------------------------------------------------------


def test_datatype_mismatch_fails_to_load(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    text = ADD_SUB_CONFIG.replace(
        '{ name: "INPUT0" data_type: TYPE_FP32', '{ name: "INPUT0" data_type: TYPE_INT32'
    )
    with pytest.raises(InvalidArgument) as info:
        load(backend, model_dir, parse_config_text(text))
    assert str(info.value) == (
        "unable to load model 'simple', configuration expects datatype TYPE_INT32 for "
        "input 'INPUT0', model provides TYPE_FP32"
    )

    text = ADD_SUB_CONFIG.replace(
        '{ name: "OUTPUT1" data_type: TYPE_FP32', '{ name: "OUTPUT1" data_type: TYPE_FP64'
    )
    with pytest.raises(InvalidArgument, match="TYPE_FP64 for output 'OUTPUT1'"):
        load(backend, model_dir, parse_config_text(text))


def test_unknown_tensor_fails_to_load(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    text = ADD_SUB_CONFIG.replace('name: "OUTPUT1"', 'name: "OUTPUTX"')
    with pytest.raises(InvalidArgument) as info:
        load(backend, model_dir, parse_config_text(text))
    assert str(info.value) == (
        "unexpected inference output 'OUTPUTX', allowed outputs are: OUTPUT0, OUTPUT1"
    )

    text = ADD_SUB_CONFIG.replace('name: "INPUT1"', 'name: "INPUTX"')
    with pytest.raises(InvalidArgument, match="unexpected inference input 'INPUTX'"):
        load(backend, model_dir, parse_config_text(text))


def test_input_count_mismatch_fails_to_load(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    text = ADD_SUB_CONFIG.replace('{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },', "")
    with pytest.raises(InvalidArgument, match="configuration expects 1 inputs, model provides 2"):
        load(backend, model_dir, parse_config_text(text))


def test_dims_mismatch_fails_to_load(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    text = ADD_SUB_CONFIG.replace(
        '{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }',
        '{ name: "INPUT1" data_type: TYPE_FP32 dims: [ 8 ] }',
    )
    with pytest.raises(InvalidArgument, match=r"tensor 'INPUT1': the model expects 2 dimensions"):
        load(backend, model_dir, parse_config_text(text))

    nobatch = tmp_path / "nobatch"
    write_add_sub_model(nobatch / "1", batch=False)
    with pytest.raises(InvalidArgument, match="first dimension must be -1"):
        load(backend, nobatch, parse_config_text(ADD_SUB_CONFIG))


def test_reshape_is_validated_and_applied(tmp_path, backend) -> None:
    model_dir = tmp_path / "reshaped"
    write_identity_model(model_dir / "1", "FP32", (-1, 2, 2))
    config = parse_config_text("""
        name: "reshaped"
        max_batch_size: 4
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ]
                  reshape: { shape: [ 2, 2 ] } } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2, 2 ] } ]
    """)
    instance = load(backend, model_dir, config)
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    [resp] = instance.execute(
        [InferRequest("reshaped", inputs=[Tensor("INPUT0", "FP32", [3, 4], data)])], ExecTiming()
    )
    assert resp.output("OUTPUT0").shape == [3, 2, 2]
    np.testing.assert_array_equal(resp.output("OUTPUT0").data, data.reshape(3, 2, 2))


# -- session options --------------------------------------------------------------------


def test_session_options_from_config_parameters(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    config = parse_config_text(
        ADD_SUB_CONFIG
        + """
        optimization { graph { level: 2 } }
        parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
        parameters { key: "inter_op_thread_count" value: { string_value: "3" } }
        parameters { key: "execution_mode" value: { string_value: "1" } }
        parameters { key: "enable_mem_arena" value: { string_value: "0" } }
        parameters { key: "enable_mem_pattern" value: { string_value: "false" } }
    """
    )
    instance = load(backend, model_dir, config)
    options = instance.session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.inter_op_num_threads == 3
    assert options.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert options.enable_cpu_mem_arena is False
    assert options.enable_mem_pattern is False
    req = add_sub_request(2)
    check_add_sub(req, instance.execute([req], ExecTiming())[0])


def test_memory_arena_shrinkage_is_a_run_option(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    config = parse_config_text(
        ADD_SUB_CONFIG
        + """
        parameters { key: "enable_mem_arena" value: { string_value: "1" } }
        parameters { key: "memory.enable_memory_arena_shrinkage"
                     value: { string_value: "cpu:0" } }
    """
    )
    instance = load(backend, model_dir, config)
    key = "memory.enable_memory_arena_shrinkage"
    assert instance.run_options.get_run_config_entry(key) == "cpu:0"
    req = add_sub_request(2)
    check_add_sub(req, instance.execute([req], ExecTiming())[0])


def test_backend_config_gives_defaults_and_config_wins(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    backend_config = {"intra_op_thread_count": "1", "inter_op_thread_count": "2"}
    config = parse_config_text(
        ADD_SUB_CONFIG
        + """
        parameters { key: "inter_op_thread_count" value: { string_value: "4" } }
    """
    )
    instance = load(backend, model_dir, config, backend_config)
    options = instance.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 4
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_session_config_entries_pass_through(tmp_path, backend) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    config = parse_config_text(
        ADD_SUB_CONFIG
        + """
        parameters { key: "session.intra_op.allow_spinning" value: { string_value: "0" } }
    """
    )
    backend_config = {"session.inter_op.allow_spinning": "0"}
    instance = load(backend, model_dir, config, backend_config)
    options = instance.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    req = add_sub_request(2)
    check_add_sub(req, instance.execute([req], ExecTiming())[0])


def test_graph_optimization_levels_follow_triton() -> None:
    levels = ort.GraphOptimizationLevel
    assert graph_optimization_level(-1) == levels.ORT_ENABLE_BASIC
    assert graph_optimization_level(0) == levels.ORT_ENABLE_ALL
    assert graph_optimization_level(1) == levels.ORT_ENABLE_EXTENDED
    assert graph_optimization_level(2) == levels.ORT_DISABLE_ALL


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("execution_mode", "2", "execution_mode are 0 or 1"),
        ("intra_op_thread_count", "many", "must be an integer"),
        ("enable_mem_arena", "maybe", "to boolean value"),
    ],
)
def test_invalid_parameters_fail_to_load(tmp_path, backend, key, value, message) -> None:
    model_dir = tmp_path / "simple"
    write_add_sub_model(model_dir / "1")
    config = parse_config_text(
        ADD_SUB_CONFIG + f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
    )
    with pytest.raises(InvalidArgument, match=message):
        load(backend, model_dir, config)
