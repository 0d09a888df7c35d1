"""The scenarios of NVIDIA's ``image_client.py`` and ``ensemble_image_client.py``.

A TensorFlow GraphDef colour classifier (``classifier``: FP32 [8, 8, 3] NHWC -> 3
class probabilities with ``labels.txt``) is built by the test, next to an ensemble
(``preprocess_ensemble``) whose first step, the Python model ``image_preprocess``,
decodes encoded image bytes on the server.  As in the examples, the clients read the
model's metadata and config to find the input, its format and the batch size, and ask
for the top classes with ``class_count``.
"""

from __future__ import annotations

import io
import queue
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from openeas.testing import framework_models as fm
from tests.integration.conftest import copy_test_model

pytest.importorskip(
    "tensorflow", reason="TensorFlow is not installed (pip install 'openeas[tensorflow]')"
)
Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")

pytestmark = pytest.mark.python_backend

LABELS = ["red", "green", "blue"]
COLORS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}

CLASSIFIER_CONFIG = """
name: "classifier"
platform: "tensorflow_graphdef"
max_batch_size: 4
input [ { name: "input" data_type: TYPE_FP32 format: FORMAT_NHWC dims: [ 8, 8, 3 ] } ]
output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" } ]
"""

ENSEMBLE_CONFIG = """
name: "preprocess_ensemble"
platform: "ensemble"
max_batch_size: 4
input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "CLASSES" data_type: TYPE_FP32 dims: [ 3 ] label_filename: "labels.txt" } ]
ensemble_scheduling {
  step [
    {
      model_name: "image_preprocess"
      model_version: -1
      input_map { key: "IMAGE" value: "IMAGE" }
      output_map { key: "PIXELS" value: "pixels" }
    },
    {
      model_name: "classifier"
      model_version: -1
      input_map { key: "input" value: "pixels" }
      output_map { key: "probabilities" value: "CLASSES" }
    }
  ]
}
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("image-repo")
    classifier = fm.write_tf_graphdef_color_classifier(root, "classifier", config=CLASSIFIER_CONFIG)
    (classifier / "labels.txt").write_text("\n".join(LABELS) + "\n")
    copy_test_model(root, "image_preprocess")
    ensemble = root / "preprocess_ensemble"
    (ensemble / "1").mkdir(parents=True)
    (ensemble / "config.pbtxt").write_text(ENSEMBLE_CONFIG)
    (ensemble / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return root


@pytest.fixture(scope="module")
def server(launch, repo):
    return launch(repo, timeout=120)


def _encoded(color: str, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), COLORS[color]).save(buffer, format=fmt)
    return buffer.getvalue()


def _top(result: Any, name: str) -> list[str]:
    """The label of the best class per batch item, from "<score>:<index>:<label>"."""
    return [row[0].decode().split(":")[2] for row in result.as_numpy(name)]


def _client_side_batch(client: Any, protocol: str, colors: list[str]) -> tuple[str, np.ndarray]:
    """image_client.py's preprocessing: the input's name, format and dims from the model's
    metadata and config; images scaled to [0, 1] in that layout."""
    metadata = client.get_model_metadata("classifier")
    config = client.get_model_config("classifier")
    if protocol == "grpc":
        config = config.config
        name, shape = metadata.inputs[0].name, list(metadata.inputs[0].shape)
        fmt = grpcclient.model_config_pb2.ModelInput.Format.Name(config.input[0].format)
        max_batch = config.max_batch_size
    else:
        name, shape = metadata["inputs"][0]["name"], metadata["inputs"][0]["shape"]
        fmt, max_batch = config["input"][0]["format"], config["max_batch_size"]
    assert fmt == "FORMAT_NHWC" and shape == [-1, 8, 8, 3] and max_batch >= len(colors)
    images = []
    for color in colors:
        with Image.open(io.BytesIO(_encoded(color))) as image:
            resized = image.convert("RGB").resize((shape[2], shape[1]))
            images.append(np.asarray(resized, dtype=np.float32) / 255.0)
    return name, np.stack(images)


def test_image_client_sync_http(client):
    name, batch = _client_side_batch(client, "http", ["red", "blue"])
    inp = httpclient.InferInput(name, list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch, binary_data=True)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=True, class_count=1)
    result = client.infer("classifier", [inp], outputs=[out])
    assert _top(result, "probabilities") == ["red", "blue"]


@pytest.mark.parametrize("mode", ["async", "streaming"])
def test_image_client_grpc_async_and_streaming(grpc_client, mode):
    name, batch = _client_side_batch(grpc_client, "grpc", ["green", "red", "blue"])
    inp = grpcclient.InferInput(name, list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch)
    out = grpcclient.InferRequestedOutput("probabilities", class_count=2)
    answers: queue.Queue = queue.Queue()
    if mode == "async":
        grpc_client.async_infer(
            "classifier", [inp], lambda result, error: answers.put((result, error)), outputs=[out]
        )
    else:
        grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
        grpc_client.async_stream_infer("classifier", [inp], outputs=[out], request_id="1")
    result, error = answers.get(timeout=60)
    if mode == "streaming":
        grpc_client.stop_stream()
    assert error is None, error
    rows = result.as_numpy("probabilities")
    assert rows.shape == (3, 2)  # class_count entries per image, best first
    assert _top(result, "probabilities") == ["green", "red", "blue"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_ensemble_image_client(client, grpc_client, protocol):
    """Encoded images (BYTES [1] per batch item) preprocessed by the server's ensemble."""
    images = np.array([[_encoded("blue")], [_encoded("green", "PNG")]], dtype=np.object_)
    if protocol == "http":
        inp = httpclient.InferInput("IMAGE", list(images.shape), "BYTES")
        inp.set_data_from_numpy(images, binary_data=True)
        out = httpclient.InferRequestedOutput("CLASSES", binary_data=True, class_count=3)
        result = client.infer("preprocess_ensemble", [inp], outputs=[out])
    else:
        inp = grpcclient.InferInput("IMAGE", list(images.shape), "BYTES")
        inp.set_data_from_numpy(images)
        out = grpcclient.InferRequestedOutput("CLASSES", class_count=3)
        result = grpc_client.infer("preprocess_ensemble", [inp], outputs=[out])
    assert _top(result, "CLASSES") == ["blue", "green"]
    first = [entry.decode().split(":") for entry in result.as_numpy("CLASSES")[0]]
    assert [label for _, _, label in first][0] == "blue" and len(first) == 3
    assert sorted(int(index) for _, index, _ in first) == [0, 1, 2]


def test_ensemble_rejects_bytes_that_are_no_image(client):
    junk = np.array([[b"definitely not a jpeg"]], dtype=np.object_)
    inp = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
    inp.set_data_from_numpy(junk)
    with pytest.raises(InferenceServerException, match="cannot decode image"):
        client.infer("preprocess_ensemble", [inp])
    # The server keeps serving.
    images = np.array([[_encoded("red")]], dtype=np.object_)
    inp.set_data_from_numpy(images)
    result = client.infer(
        "preprocess_ensemble",
        [inp],
        outputs=[httpclient.InferRequestedOutput("CLASSES", class_count=1)],
    )
    assert _top(result, "CLASSES") == ["red"]
