"""The user's journey end to end, exactly as the README runs it: ``scripts/quickstart.sh``.

Fetch inception_graphdef, upload it to ``oss://triton-model-repo/models/``, start the
platform, ``eascmd create examples/triton.config``, query it over HTTP with the document's
client and over gRPC through the gateway, scale to 2, stop, start.  Once against the
embedded object store and once against a real S3 server (SeaweedFS).  Each run has its own
``OPENEAS_HOME`` and free ports; the model is fetched once for both.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from openeas.testing.seaweedfs import SeaweedFS, start_seaweedfs
from openeas.testing.server import free_port
from tests.integration.conftest import REPO_ROOT

pytest.importorskip("tensorflow", reason="the quickstart's model needs openeas[tensorflow]")

SERVICE = "test_triton_processor"
EASCMD = str(Path(sys.executable).parent / "eascmd")
OPENEAS = str(Path(sys.executable).parent / "openeas")

#: The client script of the user's document, unchanged but for the URL and token.
DOCUMENT_CLIENT = """
import numpy as np
import time
from PIL import Image

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

URL = "<servcice url>"
HEADERS = {"Authorization": "<service token>"}
input_img = httpclient.InferInput("input", [1, 299, 299, 3], "FP32")
img = Image.open('./cat.png').resize((299, 299))
img = np.asarray(img).astype('float32') / 255.0
input_img.set_data_from_numpy(img.reshape([1, 299, 299, 3]), binary_data=True)

output = httpclient.InferRequestedOutput(
    "InceptionV3/Predictions/Softmax", binary_data=True
)
triton_client = httpclient.InferenceServerClient(url=URL, verbose=False)

start = time.time()
for i in range(10):
    results = triton_client.infer(
        "inception_graphdef", inputs=[input_img], outputs=[output], headers=HEADERS
    )
    res_body = results.get_response()
    elapsed_ms = (time.time() - start) * 1000
    if i == 0:
        print("model name: ", res_body["model_name"])
        print("model version: ", res_body["model_version"])
        print("output name: ", res_body["outputs"][0]["name"])
        print("output shape: ", res_body["outputs"][0]["shape"])
    print("[{}] Avg rt(ms): {:.2f}".format(i, elapsed_ms))
    start = time.time()
"""


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the quickstart fetches the model; shared by both journeys."""
    return tmp_path_factory.mktemp("quickstart-models")


def journey_env(home: Path, models: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENEAS_STORAGE_", "AWS_"))}
    env.update(
        OPENEAS_HOME=str(home),
        OPENEAS_QUICKSTART_MODELS=str(models),
        OPENEAS_UP_ARGS=(
            f"--api-port {free_port()} --http-port {free_port()} --grpc-port {free_port()}"
        ),
        **(extra or {}),
    )
    return env


def run_quickstart(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "quickstart.sh"), *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return result.stdout


def shut_down(env: dict[str, str]) -> None:
    """Stop the platform (and so its instances) whatever state the test left."""
    subprocess.run([OPENEAS, "down"], env=env, capture_output=True, timeout=120)


def check_journey_output(out: str) -> None:
    """What the document shows, step by step."""
    assert re.search(r"\| Internet Endpoint \| http://127\.0\.0\.1:\d+/api/predict/" + SERVICE, out)
    assert re.search(r"\|\s+Token \| [A-Za-z0-9_-]{32,}", out)
    progress = [line for line in out.splitlines() if line.startswith("[OK]")]
    create = progress[progress.index("[OK] Service is now deploying") :]
    assert create[1] == "[OK] Successfully synchronized resources"
    assert "[OK] Running [Total: 1, Pending: 0, Running: 1]" in create
    assert "[OK] Service is running" in create
    # HTTP (examples/query_inception.py) and gRPC (query_inception_grpc.py): 11 timed
    # requests each, the model's name/version/output, the top-5 labels.
    assert out.count("model name:  inception_graphdef") == 2
    assert out.count("output name:  InceptionV3/Predictions/Softmax") == 2
    assert out.count("output shape:  [1, 1001]") == 2
    timed = re.findall(r"^\[(\d+)\] Avg rt\(ms\): \d+\.\d\d$", out, re.MULTILINE)
    assert timed == [str(i) for i in range(11)] * 2
    assert out.count("top-5 classes (score:index:label):") == 2
    assert len(re.findall(r"^\s+0\.\d+:\d+:\S", out, re.MULTILINE)) == 10
    # Scale to 2, stop, start.
    assert "[OK] Running [Total: 2, Pending: 0, Running: 2]" in progress
    assert "[OK] Service is stopped" in progress
    assert progress.count("[OK] Service is running") >= 3


@pytest.fixture
def embedded_journey(tmp_path: Path, models_dir: Path) -> Iterator[tuple[dict[str, str], str]]:
    env = journey_env(tmp_path / "home", models_dir)
    try:
        yield env, run_quickstart(env)
    finally:
        shut_down(env)


def test_journey_with_the_embedded_store(
    embedded_journey: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, out = embedded_journey
    check_journey_output(out)
    home = Path(env["OPENEAS_HOME"])
    stored = home / "buckets" / "triton-model-repo" / "models" / "inception_graphdef"
    assert (stored / "config.pbtxt").is_file() and (stored / "1" / "model.graphdef").is_file()
    assert len((stored / "inception_labels.txt").read_text().splitlines()) == 1001

    # The service stays up: the document's own client script runs against it unchanged.
    desc = json.loads(
        subprocess.run(
            [EASCMD, "desc", SERVICE, "--json"], env=env, capture_output=True, text=True,
            check=True,
        ).stdout
    )  # fmt: skip
    assert desc["status"] == "Running" and desc["instances"]["running"] == 2
    from PIL import Image
    from skimage import data

    Image.fromarray(data.chelsea()).save(tmp_path / "cat.png")
    url = desc["internet_endpoint"].removeprefix("http://")
    script = DOCUMENT_CLIENT.replace("<servcice url>", url).replace(
        "<service token>", desc["token"]
    )
    (tmp_path / "client.py").write_text(script)
    result = subprocess.run(
        [sys.executable, "client.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "output shape:  [1, 1001]" in result.stdout
    assert len(re.findall(r"^\[\d+\] Avg rt\(ms\):", result.stdout, re.MULTILINE)) == 10

    # Rows of the output are probabilities (softmax), through the gateway with the token.
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    image = np.zeros((2, 299, 299, 3), np.float32)
    inp = httpclient.InferInput("input", list(image.shape), "FP32")
    inp.set_data_from_numpy(image)
    scores = client.infer(
        "inception_graphdef", [inp], headers={"Authorization": desc["token"]}
    ).as_numpy("InceptionV3/Predictions/Softmax")
    assert scores.shape == (2, 1001)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-4)


@pytest.fixture
def seaweedfs(tmp_path: Path) -> Iterator[SeaweedFS]:
    server = start_seaweedfs(tmp_path / "seaweedfs", buckets=("triton-model-repo",))
    try:
        yield server
    finally:
        server.stop()


def test_journey_with_a_real_s3_server(
    tmp_path: Path, models_dir: Path, seaweedfs: SeaweedFS
) -> None:
    env = journey_env(tmp_path / "home", models_dir, seaweedfs.env())
    try:
        out = run_quickstart(env, "--cleanup")
    finally:
        shut_down(env)
    check_journey_output(out)
    assert "[OK] Service is deleted" in out and "[OK] OpenEAS is down" in out
    keys = {
        o["Key"] for o in seaweedfs.client().list_objects_v2(Bucket="triton-model-repo")["Contents"]
    }
    assert "models/inception_graphdef/1/model.graphdef" in keys
    # Nothing went to the embedded store: the endpoint was used.
    assert not (tmp_path / "home" / "buckets").exists()


@pytest.mark.ray
def test_journey_on_a_two_node_ray_cluster(tmp_path: Path, models_dir: Path) -> None:
    """``--runtime ray``: a local two-node Ray cluster started by the script, the model in
    the platform's own S3 server, one instance per node after the scale to 2."""
    pytest.importorskip("ray", reason="ray is not installed (pip install 'openeas[ray]')")
    env = journey_env(tmp_path / "home", models_dir)
    env.pop("RAY_ADDRESS", None)
    env["OPENEAS_QUICKSTART_RAY_PORT"] = str(free_port())
    env["OPENEAS_UP_ARGS"] += f" --storage-port {free_port()}"
    pids = tmp_path / "home" / "quickstart-ray.pids"
    try:
        out = run_quickstart(env, "--runtime", "ray", "--cleanup")
    finally:
        shut_down(env)
        if pids.exists():  # the script failed before its cleanup: stop its Ray nodes
            for pid in pids.read_text().split():
                subprocess.run(["kill", pid], check=False)
    check_journey_output(out)
    assert "Ray cluster of 2 node(s)" in out and "[OK] OpenEAS is down" in out
    # The scale-to-2 table: two running instances, on two different Ray nodes.
    header = next(line for line in out.splitlines() if "| Node " in line)
    column = [c.strip() for c in header.split("|")].index("Node")
    rows = [line for line in out.splitlines() if "| Running |" in line]
    assert len({[c.strip() for c in row.split("|")][column] for row in rows[:2]}) == 2
    # The model went to the platform's S3 server, not the directory store.
    assert not (tmp_path / "home" / "buckets").exists()
    assert (tmp_path / "home" / "s3" / "data").is_dir()
    assert not pids.exists()  # --cleanup stopped the Ray nodes it started
