"""``inception_graphdef``: Triton's example InceptionV3 as a frozen TensorFlow GraphDef.

Triton's ``fetch_models.sh`` downloads Google's pretrained ``inception_v3_2016_08_28_frozen``
graph.  Here the same architecture (``keras.applications.InceptionV3``, 1001 classes) is
built with random weights and frozen with the same tensor names: input ``input``
(FP32 NHWC [-1, 299, 299, 3]) and output ``InceptionV3/Predictions/Softmax`` ([-1, 1001]).
Given ``source`` (a pretrained frozen graph), that file is used as is.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

NAME = "inception_graphdef"
INPUT = "input"
OUTPUT = "InceptionV3/Predictions/Softmax"
CLASSES = 1001
LABELS_FILE = "inception_labels.txt"

CONFIG = f"""name: "{NAME}"
platform: "tensorflow_graphdef"
max_batch_size: 128
input [
  {{
    name: "{INPUT}"
    data_type: TYPE_FP32
    format: FORMAT_NHWC
    dims: [ 299, 299, 3 ]
  }}
]
output [
  {{
    name: "{OUTPUT}"
    data_type: TYPE_FP32
    dims: [ {CLASSES} ]
    label_filename: "{LABELS_FILE}"
  }}
]
# Not in Triton's example: merge concurrent requests into one session run, and run one
# request before the model is ready (TensorFlow optimises the graph on its first run,
# which would otherwise cost the first client a second or more).
dynamic_batching {{ }}
model_warmup [
  {{
    name: "zero_image"
    batch_size: 1
    inputs {{
      key: "{INPUT}"
      value: {{ data_type: TYPE_FP32 dims: [ 299, 299, 3 ] zero_data: true }}
    }}
  }}
]
"""

Progress = Callable[[str], None]


def _import_tensorflow():  # noqa: ANN202 - the module
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        raise RuntimeError(
            "building inception_graphdef needs TensorFlow: pip install 'openeas[tensorflow]' "
            "(or pass --from with a frozen graph)"
        ) from None
    return tf


def build_graphdef(seed: int = 0, progress: Progress | None = None) -> bytes:
    """The frozen InceptionV3 GraphDef (random weights from ``seed``), serialized."""
    say = progress or (lambda _message: None)
    say("importing TensorFlow")
    tf = _import_tensorflow()
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    say("building the InceptionV3 architecture (random weights)")
    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.applications.InceptionV3(
        weights=None, classes=CLASSES, classifier_activation=None, input_shape=(299, 299, 3)
    )

    @tf.function(input_signature=[tf.TensorSpec([None, 299, 299, 3], tf.float32, name=INPUT)])
    def predict(images):  # noqa: ANN001, ANN202 - traced by TensorFlow
        logits = model(images, training=False)
        with tf.name_scope(OUTPUT.rsplit("/", 1)[0]):
            return tf.nn.softmax(logits, name=OUTPUT.rsplit("/", 1)[1])

    say("freezing the graph (variables -> constants)")
    frozen = convert_variables_to_constants_v2(predict.get_concrete_function())
    tf_logger = tf.get_logger()
    level = tf_logger.level
    tf_logger.setLevel("ERROR")  # extract_sub_graph's TF1 deprecation notice
    try:
        graph_def = tf.compat.v1.graph_util.extract_sub_graph(frozen.graph.as_graph_def(), [OUTPUT])
    finally:
        tf_logger.setLevel(level)
    names = {node.name for node in graph_def.node}
    if INPUT not in names or OUTPUT not in names:  # a TensorFlow change renamed them
        raise RuntimeError(f"the frozen graph lacks '{INPUT}' or '{OUTPUT}'")
    return graph_def.SerializeToString()


def check_graphdef(path: Path) -> None:
    """When TensorFlow is importable: ``path`` must be a GraphDef with both tensor names."""
    try:
        tf = _import_tensorflow()
    except RuntimeError:
        return
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError
        raise ValueError(f"{path} is not a TensorFlow GraphDef: {exc}") from None
    names = {node.name for node in graph_def.node}
    missing = [n for n in (INPUT, OUTPUT) if n not in names]
    if missing:
        raise ValueError(f"{path} has no node named {missing} (Triton's inception names)")


def write(
    model_dir: Path,
    labels: list[str],
    *,
    source: Path | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Path:
    """Write ``model_dir`` (config.pbtxt, labels, 1/model.graphdef); returns it."""
    say = progress or (lambda _message: None)
    if len(labels) != CLASSES:
        raise ValueError(f"inception needs {CLASSES} labels, got {len(labels)}")
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    target = version_dir / "model.graphdef"
    if source is not None:
        check_graphdef(source)
        say(f"copying {source}")
        shutil.copyfile(source, target)
    else:
        data = build_graphdef(seed, progress)
        say(f"writing {target} ({len(data) / 1e6:.0f} MB)")
        target.write_bytes(data)
    (model_dir / LABELS_FILE).write_text("\n".join(labels) + "\n")
    (model_dir / "config.pbtxt").write_text(CONFIG)
    return model_dir
