"""``densenet_onnx``: a small DenseNet-style classifier in the layout of Triton's example.

Triton's quickstart serves ``densenet_onnx`` (DenseNet-121 from the ONNX model zoo) with
input ``data_0`` (FP32 [3, 224, 224], NCHW) and output ``fc6_1`` (1000 logits, reshaped
from the model's [1, 1000, 1, 1]) labelled by ``densenet_labels.txt``.  These machines
cannot download it, so this builds a much smaller network of the same family with random
weights and the same names, shapes and config (stem convolution, one dense block whose
layers see the concatenation of all earlier feature maps, global average pooling, a 1x1
convolution to 1000 classes).  It needs only the ``onnx`` package, not TensorFlow;
``source`` (a real ``model.onnx``) is used as is.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

NAME = "densenet_onnx"
INPUT = "data_0"
OUTPUT = "fc6_1"
CLASSES = 1000
LABELS_FILE = "densenet_labels.txt"
OPSET = 13
IR_VERSION = 8

CONFIG = f"""name: "{NAME}"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [
  {{
    name: "{INPUT}"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape {{ shape: [ 1, 3, 224, 224 ] }}
  }}
]
output [
  {{
    name: "{OUTPUT}"
    data_type: TYPE_FP32
    dims: [ {CLASSES} ]
    reshape {{ shape: [ 1, {CLASSES}, 1, 1 ] }}
    label_filename: "{LABELS_FILE}"
  }}
]
"""


def build_onnx(seed: int = 0, growth: int = 12, layers: int = 4) -> bytes:
    """The serialized ONNX model (random He-initialised weights from ``seed``)."""
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise RuntimeError(
            "building densenet_onnx needs the 'onnx' package: pip install onnx "
            "(or pass --from with a model.onnx)"
        ) from None
    rng = np.random.default_rng(seed)
    nodes: list = []
    weights: list = []

    def conv(x: str, out: str, cin: int, cout: int, k: int, stride: int = 1) -> str:
        w = rng.normal(0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"{out}_w"))
        weights.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"{out}_b"))
        nodes.append(
            helper.make_node(
                "Conv", [x, f"{out}_w", f"{out}_b"], [out], kernel_shape=[k, k],
                strides=[stride, stride], pads=[k // 2] * 4,
            )
        )  # fmt: skip
        return out

    def relu(x: str, out: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [out]))
        return out

    x = relu(conv(INPUT, "stem", 3, 2 * growth, 7, stride=2), "stem_relu")
    nodes.append(
        helper.make_node("MaxPool", [x], ["pool0"], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1])
    )  # fmt: skip
    features, channels = "pool0", 2 * growth
    for i in range(layers):  # dense block: each layer sees every earlier feature map
        new = relu(conv(features, f"dense{i}", channels, growth, 3), f"dense{i}_relu")
        nodes.append(helper.make_node("Concat", [features, new], [f"concat{i}"], axis=1))
        features, channels = f"concat{i}", channels + growth
    nodes.append(helper.make_node("GlobalAveragePool", [features], ["gap"]))
    conv("gap", OUTPUT, channels, CLASSES, 1)
    graph = helper.make_graph(
        nodes,
        "densenet_small",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, CLASSES, 1, 1])],
        initializer=weights,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="openeas"
    )
    model.ir_version = IR_VERSION
    return model.SerializeToString()


def write(
    model_dir: Path,
    labels: list[str],
    *,
    source: Path | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write ``model_dir`` (config.pbtxt, labels, 1/model.onnx); returns it."""
    say = progress or (lambda _message: None)
    if len(labels) != CLASSES:
        raise ValueError(f"densenet needs {CLASSES} labels, got {len(labels)}")
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    target = version_dir / "model.onnx"
    if source is not None:
        say(f"copying {source}")
        shutil.copyfile(source, target)
    else:
        say("building a DenseNet-style network (random weights)")
        data = build_onnx(seed)
        say(f"writing {target} ({len(data) / 1e6:.1f} MB)")
        target.write_bytes(data)
    (model_dir / LABELS_FILE).write_text("\n".join(labels) + "\n")
    (model_dir / "config.pbtxt").write_text(CONFIG)
    return model_dir
