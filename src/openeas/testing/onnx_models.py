"""Tiny ONNX models for tests and benchmarks, built with ``onnx.helper``.

Every builder writes ``model.onnx`` (or ``filename``) into ``directory`` (usually a
model's version directory such as ``<repo>/<model>/1``), creating it when needed, and
returns the path of the written file.  Dimensions given as -1 (or None) become symbolic
dimensions, which is what ONNX Runtime reports as dynamic; a batching model's first
dimension is the symbolic ``batch``.  The models use opset 13 and IR version 8 so that
every supported onnxruntime release can load them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: ONNX opset and IR version of the written models.
OPSET = 13
IR_VERSION = 8

#: Triton datatype -> ``onnx.TensorProto`` element type name.
_ONNX_TYPES = {
    "BOOL": "BOOL",
    "UINT8": "UINT8",
    "UINT16": "UINT16",
    "UINT32": "UINT32",
    "UINT64": "UINT64",
    "INT8": "INT8",
    "INT16": "INT16",
    "INT32": "INT32",
    "INT64": "INT64",
    "FP16": "FLOAT16",
    "FP32": "FLOAT",
    "FP64": "DOUBLE",
    "BYTES": "STRING",
}


def onnx_elem_type(datatype: str) -> int:
    """The ``onnx.TensorProto`` element type for a Triton datatype (``"FP32"``)."""
    from onnx import TensorProto

    try:
        return int(getattr(TensorProto, _ONNX_TYPES[datatype]))
    except KeyError:
        raise ValueError(f"no ONNX element type for datatype '{datatype}'") from None


def _shape(dims: Sequence[int | str | None], batch: bool) -> list[int | str | None]:
    shape: list[int | str | None] = ["batch"] if batch else []
    for index, dim in enumerate(dims):
        if dim is None or (isinstance(dim, int) and dim < 0):
            shape.append(f"d{index}")
        else:
            shape.append(dim)
    return shape


def _value_info(name: str, datatype: str, shape: list[int | str | None]) -> Any:
    from onnx import helper

    return helper.make_tensor_value_info(name, onnx_elem_type(datatype), shape)


def _save(nodes: list[Any], inputs: list[Any], outputs: list[Any], directory: str | Path,
          filename: str, graph_name: str) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, graph_name, inputs, outputs)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="openeas"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path = Path(directory) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_add_sub_model(
    directory: str | Path,
    dtype: str = "FP32",
    batch: bool = True,
    dims: Sequence[int] = (16,),
    *,
    input_names: Sequence[str] = ("INPUT0", "INPUT1"),
    output_names: Sequence[str] = ("OUTPUT0", "OUTPUT1"),
    filename: str = "model.onnx",
) -> Path:
    """Triton's classic ``simple`` model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.

    ``dtype`` is the Triton datatype of all four tensors, ``dims`` their shape without
    the batch dimension (``batch=True`` adds a symbolic first dimension).
    """
    from onnx import helper

    shape = _shape(dims, batch)
    in0, in1 = input_names
    out0, out1 = output_names
    nodes = [
        helper.make_node("Add", [in0, in1], [out0]),
        helper.make_node("Sub", [in0, in1], [out1]),
    ]
    return _save(
        nodes,
        [_value_info(in0, dtype, shape), _value_info(in1, dtype, shape)],
        [_value_info(out0, dtype, shape), _value_info(out1, dtype, shape)],
        directory,
        filename,
        "add_sub",
    )


def write_identity_model(
    directory: str | Path,
    datatype: str = "FP32",
    dims: Sequence[int | None] = (-1, -1),
    *,
    input_name: str = "INPUT0",
    output_name: str = "OUTPUT0",
    filename: str = "model.onnx",
) -> Path:
    """OUTPUT0 = INPUT0, both of ``datatype`` (BYTES is an ONNX string tensor).

    ``dims`` is the full model shape, batch dimension included when there is one: -1 or
    None is a dynamic dimension and ``()`` a scalar.
    """
    from onnx import helper

    shape = _shape(dims, batch=False)
    return _save(
        [helper.make_node("Identity", [input_name], [output_name])],
        [_value_info(input_name, datatype, shape)],
        [_value_info(output_name, datatype, shape)],
        directory,
        filename,
        "identity",
    )


def write_model_config(model_dir: str | Path, text: str) -> Path:
    """Write ``config.pbtxt`` into ``model_dir`` and return its path."""
    path = Path(model_dir) / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


#: The config of :func:`write_add_sub_model`'s default model served as "simple" (FP32 [16],
#: batching up to 8), as the tests use it.
ADD_SUB_CONFIG = """
name: "simple"
backend: "onnxruntime"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
"""


def add_sub_inputs(client_module: Any) -> list[Any]:
    """``INPUT0`` and ``INPUT1`` of the "simple" add/sub model (both ``arange(16)``, batch
    1) for ``tritonclient.http`` or ``tritonclient.grpc`` (passed as ``client_module``)."""
    import numpy as np

    data = np.arange(16, dtype=np.float32).reshape(1, 16)
    inputs = [client_module.InferInput(n, [1, 16], "FP32") for n in ("INPUT0", "INPUT1")]
    for item in inputs:
        item.set_data_from_numpy(data)
    return inputs
