"""Write small TensorFlow and TorchScript models (with their configs) for tests and demos.

Each writer imports its framework when called, so importing this module costs nothing.
The models are tiny and deterministic, so a test can compute the expected outputs.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path


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


def _script(module: object) -> object:
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
