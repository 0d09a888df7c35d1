"""Unit tests of the framework backends' config handling (TensorFlow, PyTorch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from openeas.protocol.errors import InvalidArgument
from openeas.server.backends.framework import (
    ModelTensor,
    auto_complete,
    check_control,
    check_io,
    default_max_batch_size,
    int_setting,
    optional_bool_setting,
)
from openeas.server.repository.config import parse_config_text


def _config(text: str):
    return parse_config_text(text)


def test_int_setting_prefers_parameters_then_backend_config():
    config = _config('name: "m" parameters { key: "A" value { string_value: "3" } }')
    assert int_setting(config, {"A": "5"}, ("A",), 0) == 3
    assert int_setting(config, {"B": "7"}, ("B",), 0) == 7
    assert int_setting(config, {}, ("C",), 9) == 9
    bad = _config('name: "m" parameters { key: "A" value { string_value: "many" } }')
    with pytest.raises(InvalidArgument, match="parameter 'A' must be an integer >= 0, got 'many'"):
        int_setting(bad, {}, ("A",), 0)


def test_the_settings_helpers_all_backends_share():
    config = _config(
        'name: "m" parameters [{ key: "B" value { string_value: "maybe" } }, '
        '{ key: "N" value { string_value: "-3" } }, { key: "E" value { string_value: "" } }]'
    )
    with pytest.raises(
        InvalidArgument, match="failed to convert 'maybe' of parameter 'B' to boolean value"
    ):
        optional_bool_setting(config, {}, ("B",))
    assert optional_bool_setting(config, {"C": "on"}, ("C",)) is True
    assert optional_bool_setting(config, {}, ("C",)) is None
    assert optional_bool_setting(config, {}, ("E",)) is None
    assert int_setting(config, {}, ("N",), 0, minimum=None) == -3
    with pytest.raises(InvalidArgument, match="parameter 'N' must be an integer >= 0, got '-3'"):
        int_setting(config, {}, ("N",), 0)
    with pytest.raises(InvalidArgument, match="parameter 'X' must be an integer, got 'x'"):
        int_setting(config, {"X": "x"}, ("X",), 0, minimum=None)
    assert default_max_batch_size({}) == 4
    assert default_max_batch_size({"default-max-batch-size": "-2"}) == 0
    with pytest.raises(InvalidArgument, match="'default-max-batch-size'"):
        default_max_batch_size({"default-max-batch-size": "many"})


def test_auto_complete_fills_batching_and_io():
    config = _config('name: "m"')
    x = ModelTensor("x", "FP32", (-1, 4))
    y = ModelTensor("y", "INT64", (-1,))
    auto_complete(config, [x], [y], {})
    assert config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [4])]
    (out,) = config.output
    assert list(out.dims) == [1] and out.HasField("reshape")  # a scalar per batch item


def test_auto_complete_refuses_batching_for_fixed_shapes():
    config = _config('name: "m" max_batch_size: 2')
    with pytest.raises(InvalidArgument, match="does not support batching"):
        auto_complete(
            config, [ModelTensor("x", "FP32", (3, 4))], [ModelTensor("y", "FP32", (3,))], {}
        )


def test_check_io_reports_type_and_shape_mismatches():
    config = _config(
        'name: "m" max_batch_size: 4 input { name: "x" data_type: TYPE_INT32 dims: [ 4 ] }'
    )
    (io,) = config.input
    with pytest.raises(
        InvalidArgument, match="expects datatype TYPE_INT32 for input 'x', model provides TYPE_FP32"
    ):
        check_io(config, "input", io, ModelTensor("x", "FP32", (-1, 4)))
    with pytest.raises(InvalidArgument, match=r"shape \[-1,5\].*shape \[-1,4\]"):
        check_io(config, "input", io, ModelTensor("x", "INT32", (-1, 5)))
    with pytest.raises(InvalidArgument, match="first dimension must be -1"):
        check_io(config, "input", io, ModelTensor("x", "INT32", (8, 4)))
    check_io(config, "input", io, ModelTensor("x", "INT32", None))  # unknown rank: accepted
    check_io(config, "input", io, ModelTensor("x", "INT32", (-1, -1)))


def test_pytorch_input_positions():
    torch_backend = pytest.importorskip(
        "openeas.server.backends.pytorch", reason="torch is not installed"
    )
    positions = torch_backend.positions
    assert positions(["INPUT__1", "INPUT__0"], ["a", "b"]) == [1, 0]
    assert positions(["b", "a"], ["a", "b"]) == [1, 0]
    assert positions(["x", "y"], ["a", "b"]) == [0, 1]  # neither convention: config order
    plain = _config('name: "m" input { name: "INPUT__0" } input { name: "INPUT__2" }')
    with pytest.raises(InvalidArgument, match=r"positions \[0, 2\]; they must be 0..1"):
        torch_backend.input_order(plain, None)


_SEQUENCE = """
name: "m" max_batch_size: 4
input {{ name: "{input}" data_type: TYPE_INT32 dims: [ 1 ] }}
sequence_batching {{ control_input [
  {{ name: "{start}" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
  {{ name: "CORRID__1" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: {corrid} }} ] }}
] }}
"""


def test_check_control_datatype_and_shape():
    config = _config(_SEQUENCE.format(input="INPUT", start="START", corrid="TYPE_UINT64"))
    check_control(config, "START", "INT32", ModelTensor("START", "INT32", (-1, 1)))
    check_control(config, "START", "INT32", ModelTensor("START", "INT32", None))
    with pytest.raises(InvalidArgument, match="expects TYPE_BOOL but the model configuration"):
        check_control(config, "START", "INT32", ModelTensor("START", "BOOL", (-1, 1)))
    with pytest.raises(InvalidArgument, match=r"model expects shape \[-1\] but control"):
        check_control(config, "START", "INT32", ModelTensor("START", "INT32", (-1,)))


def test_pytorch_control_inputs_take_their_index():
    torch_backend = pytest.importorskip(
        "openeas.server.backends.pytorch", reason="torch is not installed"
    )
    config = _config(_SEQUENCE.format(input="INPUT", start="START__2", corrid="TYPE_INT64"))
    assert torch_backend.input_order(config, ["x", "c", "s"]) == ["INPUT", "CORRID__1", "START__2"]
    with pytest.raises(InvalidArgument, match="does not follow <name>__<index>"):
        torch_backend.input_order(
            _config(_SEQUENCE.format(input="INPUT", start="START", corrid="TYPE_INT64")), None
        )
    unsigned = _config(_SEQUENCE.format(input="INPUT", start="START__2", corrid="TYPE_UINT64"))
    with pytest.raises(InvalidArgument, match="type 'TYPE_UINT64' is not supported by PyTorch"):
        torch_backend.input_order(unsigned, None)
    clash = _config(_SEQUENCE.format(input="INPUT__1", start="START__2", corrid="TYPE_INT64"))
    with pytest.raises(InvalidArgument, match=r"positions \[1, 2, 1\]; they must be 0..2"):
        torch_backend.input_order(clash, None)


def test_tensorflow_session_threads_from_backend_config(tmp_path: Path):
    tf_backend = pytest.importorskip(
        "openeas.server.backends.tensorflow", reason="tensorflow is not installed"
    )
    config = _config(
        'name: "m" parameters { key: "TF_NUM_INTER_THREADS" value { string_value: "2" } }'
    )
    proto = tf_backend.session_config(
        config, {"intra_op_thread_count": "3", "TF_NUM_INTER_THREADS": "5"}
    )
    assert proto.intra_op_parallelism_threads == 3
    assert proto.inter_op_parallelism_threads == 2  # the model's parameter wins
    (tmp_path / "1" / "model.savedmodel").mkdir(parents=True)
    assert (
        tf_backend.model_format(_config('name: "m" backend: "tensorflow"'), tmp_path / "1")
        == "tensorflow_savedmodel"
    )
    with pytest.raises(InvalidArgument, match="no model.graphdef or model.savedmodel"):
        tf_backend.model_format(_config('name: "m" backend: "tensorflow"'), tmp_path / "2")


def test_pytorch_implicit_state_positions_and_outputs():
    torch_backend = pytest.importorskip(
        "openeas.server.backends.pytorch", reason="torch is not installed"
    )
    text = """
    name: "m" max_batch_size: 4
    input { name: "INPUT__0" data_type: TYPE_INT32 dims: [ 1 ] }
    output { name: "OUTPUT__0" data_type: TYPE_INT32 dims: [ 1 ] }
    sequence_batching { state { input_name: "acc" output_name: "%s" data_type: TYPE_FP32 dims: [ 1 ] } }
    """
    config = _config(text % "ACC_OUT__1")
    assert torch_backend.input_order(config, ["x", "acc"]) == ["INPUT__0", "acc"]
    with pytest.raises(InvalidArgument, match="state input 'acc' must follow"):
        torch_backend.input_order(config, ["x", "y"])
    index, dtypes = torch_backend.output_map(config)
    assert index == {"OUTPUT__0": 0, "ACC_OUT__1": 1}
    assert str(dtypes["ACC_OUT__1"]) == "torch.float32"
    with pytest.raises(InvalidArgument, match="state output 'ACC_OUT' does not follow"):
        torch_backend.output_map(_config(text % "ACC_OUT"))
