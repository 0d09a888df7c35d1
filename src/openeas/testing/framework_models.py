"""Write small TensorFlow and TorchScript models (with their configs) for tests and demos.

Each writer imports its framework when called, so importing this module costs nothing.
The models are tiny and deterministic, so a test can compute the expected outputs.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any


def _write_config(model_dir: Path, text: str | None) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    if text is not None:
        (model_dir / "config.pbtxt").write_text(text)


def write_tf_graphdef_add_sub(
    repo: Path, name: str, *, dims: int = 16, config: str | None = None
) -> Path:
    """A frozen GraphDef: ``ops/add = INPUT0 + INPUT1``, ``ops/sub = INPUT0 - INPUT1``.

    Inputs are FP32 ``[-1, dims]`` placeholders named ``INPUT0``/``INPUT1``; the outputs
    are the ops ``ops/add`` and ``ops/sub`` (tensor names ``ops/add:0`` and ``ops/sub:0``),
    so configs can name them with or without the ``:0`` suffix.  ``config`` is written as
    ``config.pbtxt`` when given.  Returns the model directory.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        a = tf.compat.v1.placeholder(tf.float32, [None, dims], name="INPUT0")
        b = tf.compat.v1.placeholder(tf.float32, [None, dims], name="INPUT1")
        with tf.name_scope("ops"):
            tf.add(a, b, name="add")
            tf.subtract(a, b, name="sub")
    model_dir = repo / name
    _write_config(model_dir, config)
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / "model.graphdef").write_bytes(graph.as_graph_def().SerializeToString())
    return model_dir


def write_tf_savedmodel_scale(
    repo: Path, name: str, *, scale: float = 2.0, config: str | None = None
) -> Path:
    """A TF2 SavedModel with a variable ``scale`` and two signatures over ``x`` FP32 [-1,4].

    ``serving_default`` returns ``scaled = x * scale`` and ``total = sum(x, axis=1)``
    ([-1, 1]); ``triple`` returns ``tripled = x * 3``.  Without ``config`` no
    ``config.pbtxt`` is written (auto-complete fills it).  Returns the model directory.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    spec = [tf.TensorSpec([None, 4], tf.float32, name="x")]

    class Scale(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = tf.Variable(scale, dtype=tf.float32)

        @tf.function(input_signature=spec)
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {
                "scaled": x * self.scale,
                "total": tf.reduce_sum(x, axis=1, keepdims=True),
            }

        @tf.function(input_signature=spec)
        def triple(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"tripled": x * 3.0}

    module = Scale()
    model_dir = repo / name
    _write_config(model_dir, config)
    path = model_dir / "1" / "model.savedmodel"
    tf.saved_model.save(
        module, str(path), signatures={"serving_default": module.serve, "triple": module.triple}
    )
    return model_dir


def _script(module: object) -> Any:
    """``torch.jit.script`` without its deprecation notice (TorchScript is what we serve)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def write_torchscript_add_sub(repo: Path, name: str, *, config: str | None = None) -> Path:
    """A scripted ``forward(a, b) -> (a + b, a - b)`` saved as ``1/model.pt``."""
    import torch

    class AddSub(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return a + b, a - b

    model_dir = repo / name
    _write_config(model_dir, config)
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    _script(AddSub()).save(str(model_dir / "1" / "model.pt"))
    return model_dir


def write_torchscript_dict_out(repo: Path, name: str, *, config: str | None = None) -> Path:
    """A scripted ``forward(x) -> {"double": 2x, "square": x*x}`` saved as ``1/model.pt``."""
    import torch

    class DictOut(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"double": x * 2, "square": x * x}

    model_dir = repo / name
    _write_config(model_dir, config)
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    _script(DictOut()).save(str(model_dir / "1" / "model.pt"))
    return model_dir


def write_tf_graphdef_strings(repo: Path, name: str, *, config: str | None = None) -> Path:
    """A frozen GraphDef over strings: ``TEXT`` (string [-1]) -> ``LENGTH`` (int32 [-1])
    and ``UPPER`` (string [-1], ASCII upper case)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        text = tf.compat.v1.placeholder(tf.string, [None], name="TEXT")
        tf.strings.length(text, name="LENGTH")
        tf.strings.upper(text, name="UPPER")
    model_dir = repo / name
    _write_config(model_dir, config)
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / "model.graphdef").write_bytes(graph.as_graph_def().SerializeToString())
    return model_dir


def _write_graphdef(repo: Path, name: str, graph: object, config: str | None) -> Path:
    model_dir = repo / name
    _write_config(model_dir, config)
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "1" / "model.graphdef").write_bytes(
        graph.as_graph_def().SerializeToString()  # type: ignore[attr-defined]
    )
    return model_dir


SIMPLE_CONFIG = """
name: "{name}"
platform: "tensorflow_graphdef"
max_batch_size: 8
input [
  {{ name: "INPUT0" data_type: {dtype} dims: [ 16 ] }},
  {{ name: "INPUT1" data_type: {dtype} dims: [ 16 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: {dtype} dims: [ 16 ] }},
  {{ name: "OUTPUT1" data_type: {dtype} dims: [ 16 ] }}
]
"""


def write_tf_graphdef_simple(
    repo: Path, name: str = "simple", *, datatype: str = "INT32", config: str | None = None
) -> Path:
    """The layout of Triton's ``simple`` / ``simple_int8`` / ``simple_string`` models.

    Placeholders ``INPUT0``/``INPUT1`` ([-1, 16]); ``OUTPUT0 = INPUT0 + INPUT1`` and
    ``OUTPUT1 = INPUT0 - INPUT1``.  ``datatype`` is ``INT32``, ``INT8`` or ``BYTES``
    (string tensors holding decimal integers: parsed, added/subtracted, formatted back).
    Without ``config`` a Triton-like ``config.pbtxt`` (max_batch_size 8, dims [16]) is
    written; ``config=""`` writes none.  Returns the model directory.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    strings = datatype == "BYTES"
    dtype = tf.string if strings else tf.as_dtype(datatype.lower())
    graph = tf.Graph()
    with graph.as_default():
        a = tf.compat.v1.placeholder(dtype, [None, 16], name="INPUT0")
        b = tf.compat.v1.placeholder(dtype, [None, 16], name="INPUT1")
        if strings:
            a, b = (tf.strings.to_number(t, out_type=tf.int32) for t in (a, b))
            tf.strings.as_string(a + b, name="OUTPUT0")
            tf.strings.as_string(a - b, name="OUTPUT1")
        else:
            tf.identity(a + b, name="OUTPUT0")
            tf.identity(a - b, name="OUTPUT1")
    if config is None:
        config_type = "TYPE_STRING" if strings else f"TYPE_{datatype}"
        config = SIMPLE_CONFIG.format(name=name, dtype=config_type)
    return _write_graphdef(repo, name, graph, config or None)


SEQUENCE_CONFIG = """
name: "{name}"
platform: "tensorflow_graphdef"
max_batch_size: 8
sequence_batching {{
  max_sequence_idle_microseconds: 5000000
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "READY" control [ {{ kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] }} ] }}{dyna}
  ]
}}
input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
"""

_DYNA_CONTROLS = """,
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_INT32 } ] }"""


def write_tf_graphdef_sequence(
    repo: Path, name: str = "simple_sequence", *, dyna: bool = False, config: str | None = None
) -> Path:
    """The layout of Triton's ``simple_sequence`` / ``simple_dyna_sequence``, built here.

    INT32 [-1, 1] placeholders ``INPUT``, ``START``, ``READY`` (with ``dyna`` also ``END``
    and ``CORRID``): the control inputs the sequence batcher feeds.  ``OUTPUT`` is
    ``READY * (INPUT + START)``, with ``dyna`` ``READY * (INPUT + START + END * CORRID)``:
    what NVIDIA's sequence client examples expect (the first request's value + 1, the
    last one's + the correlation ID).  Without ``config`` a Triton-like config is written
    (``config=""``: none).  Returns the model directory.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        names = ["INPUT", "START", "READY"] + (["END", "CORRID"] if dyna else [])
        t = {n: tf.compat.v1.placeholder(tf.int32, [None, 1], name=n) for n in names}
        value = t["INPUT"] + t["START"]
        if dyna:
            value = value + t["END"] * t["CORRID"]
        tf.multiply(value, t["READY"], name="OUTPUT")
    if config is None:
        config = SEQUENCE_CONFIG.format(name=name, dyna=_DYNA_CONTROLS if dyna else "")
    return _write_graphdef(repo, name, graph, config or None)


IDENTITY_CONFIG = """
name: "{name}"
platform: "tensorflow_graphdef"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] }} ]
"""


def write_tf_graphdef_identity(
    repo: Path, name: str = "simple_identity", *, config: str | None = None
) -> Path:
    """The layout of Triton's ``simple_identity``: string ``INPUT0`` [-1, -1] returned as
    ``OUTPUT0``.  Without ``config`` a Triton-like config is written (``""``: none)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        text = tf.compat.v1.placeholder(tf.string, [None, None], name="INPUT0")
        tf.identity(text, name="OUTPUT0")
    if config is None:
        config = IDENTITY_CONFIG.format(name=name)
    return _write_graphdef(repo, name, graph, config or None)


def write_tf_savedmodel_sequence(repo: Path, name: str, *, config: str | None = None) -> Path:
    """A TF2 SavedModel whose ``serving_default`` signature takes ``INPUT``, ``START`` and
    ``READY`` (INT32 [-1, 1]) and returns ``OUTPUT = READY * (INPUT + START)``.  Without
    ``config`` no ``config.pbtxt`` is written.  Returns the model directory."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    spec = [tf.TensorSpec([None, 1], tf.int32, name=n) for n in ("INPUT", "START", "READY")]

    class Sequence(tf.Module):
        @tf.function(input_signature=spec)
        def serve(self, INPUT: tf.Tensor, START: tf.Tensor, READY: tf.Tensor) -> dict:  # noqa: N803
            return {"OUTPUT": READY * (INPUT + START)}

    module = Sequence()
    model_dir = repo / name
    _write_config(model_dir, config)
    path = model_dir / "1" / "model.savedmodel"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return model_dir


def write_tf_example_repository(repo: Path) -> Path:
    """``simple``, ``simple_int8``, ``simple_string``, ``simple_identity``,
    ``simple_sequence`` and ``simple_dyna_sequence``: TensorFlow GraphDef models laid out like Triton's example
    model repository (built here, with Triton's tensor names and configs)."""
    write_tf_graphdef_simple(repo, "simple")
    write_tf_graphdef_simple(repo, "simple_int8", datatype="INT8")
    write_tf_graphdef_simple(repo, "simple_string", datatype="BYTES")
    write_tf_graphdef_identity(repo, "simple_identity")
    write_tf_graphdef_sequence(repo, "simple_sequence")
    write_tf_graphdef_sequence(repo, "simple_dyna_sequence", dyna=True)
    return repo


def write_torchscript_sequence(repo: Path, name: str, *, config: str | None = None) -> Path:
    """A scripted ``forward(INPUT__0, START__1, READY__2) -> READY * (INPUT + START)``
    (INT32), a sequence model whose control inputs follow Triton's ``<name>__<index>``."""
    import torch

    class Sequence(torch.nn.Module):
        def forward(
            self, INPUT__0: torch.Tensor, START__1: torch.Tensor, READY__2: torch.Tensor
        ) -> torch.Tensor:
            return READY__2 * (INPUT__0 + START__1)

    model_dir = repo / name
    _write_config(model_dir, config)
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    _script(Sequence()).save(str(model_dir / "1" / "model.pt"))
    return model_dir


def write_tf_graphdef_color_classifier(
    repo: Path, name: str, *, size: int = 8, config: str | None = None
) -> Path:
    """A frozen GraphDef image "classifier": ``input`` FP32 [-1, size, size, 3] (NHWC,
    values in [0, 1]) -> ``probabilities`` FP32 [-1, 3], the softmax of 10 x the mean of
    each channel, so a red image scores class 0, green 1, blue 2.  ``config`` is written
    when given.  Returns the model directory."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        pixels = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3], name="input")
        means = tf.reduce_mean(pixels, axis=[1, 2])
        tf.nn.softmax(means * 10.0, name="probabilities")
    return _write_graphdef(repo, name, graph, config)


def write_torchscript_accumulator(repo: Path, name: str, *, config: str | None = None) -> Path:
    """A scripted sequence accumulator over Triton's implicit state:
    ``forward(INPUT__0, ACC_IN__1, START__2) -> (total, total)`` (INT32) where ``total``
    is ``INPUT`` at sequence start, else ``ACC_IN + INPUT``: the first element is the
    output, the second the next state (``ACC_OUT__1``)."""
    import torch

    class Accumulator(torch.nn.Module):
        def forward(
            self, INPUT__0: torch.Tensor, ACC_IN__1: torch.Tensor, START__2: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            total = torch.where(START__2 == 1, INPUT__0, ACC_IN__1 + INPUT__0)
            return total, total

    model_dir = repo / name
    _write_config(model_dir, config)
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    _script(Accumulator()).save(str(model_dir / "1" / "model.pt"))
    return model_dir
