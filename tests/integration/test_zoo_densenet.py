"""``openeas models fetch densenet_onnx``: Triton's quickstart layout, no TensorFlow needed.

Built once for the module through the real CLI, served, and queried the way Triton's
quickstart image client does (``data_0`` [3, 224, 224] FP32, classification of ``fc6_1``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

MODEL = "densenet_onnx"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("densenet-repo")
    result = subprocess.run(
        [sys.executable, "-m", "openeas.cli.main", "models", "fetch", MODEL, str(root)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "building a DenseNet-style network" in result.stderr
    return root


@pytest.fixture(scope="module")
def server(launch, repo):
    return launch(repo)


def test_layout(repo: Path):
    labels = (repo / MODEL / "densenet_labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[0] == "tench" and labels[-1] == "toilet tissue"
    assert (repo / MODEL / "1" / "model.onnx").is_file()
    assert 'label_filename: "densenet_labels.txt"' in (repo / MODEL / "config.pbtxt").read_text()


def test_infer_and_classify(server, repo: Path):
    labels = (repo / MODEL / "densenet_labels.txt").read_text().splitlines()
    image = np.random.default_rng(0).random((3, 224, 224), dtype=np.float32)
    client = httpclient.InferenceServerClient(server.http_url)
    meta = client.get_model_metadata(MODEL)
    assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [("data_0", [3, 224, 224])]
    inp = httpclient.InferInput("data_0", [3, 224, 224], "FP32")
    inp.set_data_from_numpy(image, binary_data=True)
    logits = client.infer(MODEL, [inp]).as_numpy("fc6_1")
    assert logits.shape == (1000,) and np.isfinite(logits).all()
    classified = client.infer(
        MODEL, [inp], outputs=[httpclient.InferRequestedOutput("fc6_1", class_count=2)]
    ).as_numpy("fc6_1")
    top = np.argsort(-logits)[:2]
    for entry, index in zip(classified, top, strict=True):
        _, idx, label = entry.decode().split(":", 2)
        assert int(idx) == index and label == labels[index]
    client.close()
    gclient = grpcclient.InferenceServerClient(server.grpc_url)
    ginp = grpcclient.InferInput("data_0", [3, 224, 224], "FP32")
    ginp.set_data_from_numpy(image)
    np.testing.assert_allclose(gclient.infer(MODEL, [ginp]).as_numpy("fc6_1"), logits, rtol=1e-5)
    gclient.close()
