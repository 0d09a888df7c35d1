"""Start-up, readiness and command-line behaviour seen through the HTTP front end."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from openeas.testing.onnx_models import (
    write_add_sub_model,
    write_identity_model,
    write_model_config,
)
from openeas.testing.server import free_port
from tests.integration.conftest import raw_request, run_cli, server_command

GOOD_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
"""
BROKEN_CONFIG = 'platform: "onnxruntime_onnx"\nmax_batch_size: 4\ninput [ { name: "INPUT0" \n'


@pytest.fixture(scope="module")
def mixed_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two good models, one whose config.pbtxt does not parse, and two other failures."""
    root = tmp_path_factory.mktemp("mixed-repo")
    for name in ("good_a", "good_b", "broken"):
        write_identity_model(root / name / "1", "FP32", (-1, -1))
        write_model_config(root / name, BROKEN_CONFIG if name == "broken" else GOOD_CONFIG)
    # a model file that is not ONNX, with no config.pbtxt (auto-complete reads it)
    (root / "corrupt" / "1").mkdir(parents=True)
    (root / "corrupt" / "1" / "model.onnx").write_bytes(b"not a protobuf")
    # nothing that names a backend
    (root / "nobackend" / "1").mkdir(parents=True)
    (root / "nobackend" / "1" / "weights.bin").write_bytes(b"\0" * 8)
    return root


@pytest.fixture(scope="module")
def strict_server(launch, mixed_repo):
    # strict readiness is the default: never ready while a model failed to load
    return launch(mixed_repo, "--exit-on-error=false", wait_ready=False)


@pytest.fixture(scope="module")
def lenient_server(launch, mixed_repo):
    return launch(mixed_repo, "--exit-on-error=false", "--strict-readiness=false")


def _identity_infer(server, model: str) -> np.ndarray:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        data = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
        inp = httpclient.InferInput("INPUT0", [1, 3], "FP32")
        inp.set_data_from_numpy(data)
        got = client.infer(model, [inp]).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(got, data)
        return got
    finally:
        client.close()


def test_broken_model_makes_strict_server_not_ready(strict_server):
    assert raw_request(strict_server, "GET", "/v2/health/live").status == 200
    response = raw_request(strict_server, "GET", "/v2/health/ready")
    assert response.status == 400, response
    client = httpclient.InferenceServerClient(strict_server.http_url)
    try:
        assert client.is_server_live()
        assert not client.is_server_ready()
    finally:
        client.close()


def test_bad_config_does_not_stop_other_models(strict_server):
    for name in ("good_a", "good_b"):
        assert raw_request(strict_server, "GET", f"/v2/models/{name}/ready").status == 200
        _identity_infer(strict_server, name)
    assert raw_request(strict_server, "GET", "/v2/models/broken/ready").status == 400
    client = httpclient.InferenceServerClient(strict_server.http_url)
    try:
        index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    finally:
        client.close()
    assert index["good_a"]["state"] == "READY"
    assert index["good_b"]["state"] == "READY"
    assert index["broken"]["state"] == "UNAVAILABLE"
    reason = index["broken"]["reason"]
    assert "config.pbtxt" in reason or "parse" in reason, reason
    for name in ("corrupt", "nobackend"):
        assert index[name]["state"] == "UNAVAILABLE", index[name]
        assert index[name]["reason"], index[name]
    assert "backend" in index["nobackend"]["reason"]


def test_lenient_readiness_ignores_failed_models(lenient_server):
    response = raw_request(lenient_server, "GET", "/v2/health/ready")
    assert response.status == 200, response
    _identity_infer(lenient_server, "good_a")


def test_exit_on_error_true_with_broken_model_exits_nonzero(mixed_repo):
    run = subprocess.run(
        server_command(
            f"--model-repository={mixed_repo}",
            "--exit-on-error=true",
            "--http-address=127.0.0.1",
            f"--http-port={free_port()}",
            f"--grpc-port={free_port()}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={free_port()}",
        ),
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert run.returncode != 0
    assert "broken" in run.stdout + run.stderr


def test_default_exit_on_error_with_good_models_serves(launch, tmp_path):
    repo = tmp_path / "repo"
    write_add_sub_model(repo / "simple" / "1", dims=(4,))
    server = launch(repo)  # --exit-on-error defaults to true: must still start
    assert raw_request(server, "GET", "/v2/health/ready").status == 200


# -- command line ---------------------------------------------------------------------


def test_unknown_flag_exits_2_naming_the_flag(tmp_path):
    run = run_cli(f"--model-repository={tmp_path}", "--no-such-flag=1")
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "--no-such-flag" in lines[0]
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "flag", ["--strict-readiness=maybe", "--exit-on-error=2", "--allow-http=yesplease"]
)
def test_bad_boolean_exits_2(tmp_path, flag):
    run = run_cli(f"--model-repository={tmp_path}", flag)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    name, value = flag.split("=")
    assert name in lines[0] and value in lines[0], lines[0]


@pytest.mark.parametrize("flag", ["--model-control-mode=sometimes", "--http-port=99999"])
def test_bad_value_exits_2(tmp_path, flag):
    run = run_cli(f"--model-repository={tmp_path}", flag)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_missing_repository_directory_exits_nonzero(tmp_path):
    run = run_cli(f"--model-repository={tmp_path / 'absent'}", f"--http-port={free_port()}")
    assert run.returncode not in (0, 2)
    assert "absent" in run.stdout + run.stderr
