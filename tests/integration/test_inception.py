"""The mission's model: ``openeas models fetch inception_graphdef`` served and queried.

The model is built once for this module through the real CLI (about 10 s: InceptionV3
with random weights, frozen), then queried with the user's document's client pattern
(binary input ``input`` [1, 299, 299, 3] FP32, binary output
``InceptionV3/Predictions/Softmax``) over HTTP and gRPC, and with Triton's
``classification`` extension, whose labels come from ``inception_labels.txt``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

pytest.importorskip(
    "tensorflow", reason="TensorFlow is not installed (pip install 'openeas[tensorflow]')"
)

MODEL = "inception_graphdef"
OUTPUT = "InceptionV3/Predictions/Softmax"


def _fetch(directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "openeas.cli.main",
            "models",
            "fetch",
            MODEL,
            str(directory),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inception-repo")
    result = _fetch(root)
    assert result.returncode == 0, result.stderr
    assert "freezing the graph" in result.stderr  # progress of the slow steps
    assert result.stdout.strip() == str(root / MODEL)
    return root


@pytest.fixture(scope="module")
def server(launch, repo):
    return launch(repo, timeout=180)


@pytest.fixture(scope="module")
def labels(repo: Path) -> list[str]:
    return (repo / MODEL / "inception_labels.txt").read_text().splitlines()


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (299, 299, 3)).astype(np.float32)


def test_layout_matches_triton_example(repo: Path, labels: list[str]):
    from tritonclient.grpc import model_config_pb2 as mc

    from openeas.server.repository.config import parse_config_text

    model_dir = repo / MODEL
    assert (model_dir / "1" / "model.graphdef").stat().st_size > 50_000_000
    config = parse_config_text((model_dir / "config.pbtxt").read_text())
    assert config.platform == "tensorflow_graphdef"
    assert config.max_batch_size == 128
    (inp,) = config.input
    assert (inp.name, list(inp.dims)) == ("input", [299, 299, 3])
    assert inp.format == mc.ModelInput.FORMAT_NHWC
    (out,) = config.output
    assert (out.name, list(out.dims), out.label_filename) == (
        OUTPUT,
        [1001],
        "inception_labels.txt",
    )
    assert len(labels) == 1001 and len(set(labels)) > 990
    assert labels[0] == "background"
    assert labels[1] == "tench" and labels[1000] == "toilet tissue"


def test_fetch_refuses_to_overwrite_and_rejects_bad_input(repo: Path, tmp_path: Path):
    again = _fetch(repo)
    assert again.returncode != 0
    assert "already exists" in again.stderr and "--force" in again.stderr
    unknown = subprocess.run(
        [
            sys.executable,
            "-m",
            "openeas.cli.main",
            "models",
            "fetch",
            "no_such_model",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unknown.returncode != 0 and "unknown model 'no_such_model'" in unknown.stderr
    bogus = tmp_path / "bogus.graphdef"
    bogus.write_bytes(b"\xff\xff not a graph")
    bad = _fetch(tmp_path / "repo", "--from", str(bogus))
    assert bad.returncode != 0 and "not a TensorFlow GraphDef" in bad.stderr
    assert not (tmp_path / "repo" / MODEL).exists()
    assert not any((tmp_path / "repo").iterdir())  # no partial build left behind


def test_fetch_from_a_given_graph_uses_it_as_is(repo: Path, tmp_path: Path):
    source = repo / MODEL / "1" / "model.graphdef"
    result = _fetch(tmp_path, "--from", str(source))
    assert result.returncode == 0, result.stderr
    copied = tmp_path / MODEL / "1" / "model.graphdef"
    assert copied.read_bytes() == source.read_bytes()


def test_document_client_http_binary(server):
    """The user's document's client: binary input and output over HTTP."""
    client = httpclient.InferenceServerClient(url=server.http_url, verbose=False)
    input_img = httpclient.InferInput("input", [1, 299, 299, 3], "FP32")
    input_img.set_data_from_numpy(_image().reshape([1, 299, 299, 3]), binary_data=True)
    output = httpclient.InferRequestedOutput(OUTPUT, binary_data=True)
    results = client.infer(MODEL, inputs=[input_img], outputs=[output])
    probabilities = results.as_numpy(OUTPUT)
    assert probabilities.shape == (1, 1001)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), [1.0], rtol=1e-4)
    assert (probabilities >= 0).all()
    response = results.get_response()
    assert response["model_name"] == MODEL and response["model_version"] == "1"
    client.close()


def test_batch_over_grpc_rows_sum_to_one(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    batch = np.stack([_image(1), _image(2)])
    inp = grpcclient.InferInput("input", [2, 299, 299, 3], "FP32")
    inp.set_data_from_numpy(batch)
    result = client.infer(MODEL, [inp], outputs=[grpcclient.InferRequestedOutput(OUTPUT)])
    probabilities = result.as_numpy(OUTPUT)
    assert probabilities.shape == (2, 1001)
    np.testing.assert_allclose(probabilities.sum(axis=1), [1.0, 1.0], rtol=1e-4)
    client.close()


def test_classification_returns_labels_from_the_file(server, labels: list[str]):
    client = httpclient.InferenceServerClient(server.http_url)
    image = _image(3).reshape(1, 299, 299, 3)
    inp = httpclient.InferInput("input", [1, 299, 299, 3], "FP32")
    inp.set_data_from_numpy(image, binary_data=True)
    raw = client.infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput(OUTPUT)])
    probabilities = raw.as_numpy(OUTPUT)[0]
    classified = client.infer(
        MODEL, [inp], outputs=[httpclient.InferRequestedOutput(OUTPUT, class_count=3)]
    )
    entries = classified.as_numpy(OUTPUT)
    assert entries.shape == (1, 3)
    top = np.argsort(-probabilities)[:3]
    for entry, index in zip(entries[0], top, strict=True):
        value, idx, label = entry.decode().split(":", 2)
        assert int(idx) == index
        assert label == labels[index]
        assert float(value) == pytest.approx(probabilities[index], abs=1e-6)  # printed %f
    client.close()
