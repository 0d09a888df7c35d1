"""perf_analyzer (from the tritonclient 2.51.0 wheel) runs against openeas-server.

perf_analyzer asks for server metadata, model metadata and config, runs inferences and
reads the model statistics before and after; it fails on any protocol mismatch.  These
runs are short: they check compatibility, not speed (speed lives in benchmarks/).
"""

from __future__ import annotations

import shutil

import pytest

from openeas.testing.onnx_models import write_add_sub_model
from openeas.testing.perf import run_perf_analyzer, unavailable_reason
from tests.integration.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(bool(unavailable_reason()), reason=unavailable_reason())

IDENTITY = REPO_ROOT / "examples" / "models" / "identity"


@pytest.fixture(scope="module")
def server(launch, tmp_path_factory):
    repo = tmp_path_factory.mktemp("perf_repo")
    shutil.copytree(IDENTITY, repo / "identity")
    write_add_sub_model(repo / "add_sub_onnx" / "1")
    (repo / "add_sub_onnx" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 8\ndynamic_batching { }\n'
    )
    return launch(repo, "--allow-client-shm=true")


@pytest.mark.parametrize("model", ["identity", "add_sub_onnx"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_runs(server, model, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    point, output = run_perf_analyzer(
        model, url, protocol=protocol, concurrency=2, measurement_ms=500, stability=100
    )
    assert point.throughput > 0
    # perf_analyzer printed the server-side statistics it read from the server.
    assert "Server:" in output and "Inference count:" in output
    server_count = int(output.split("Inference count:")[1].split()[0])
    assert server_count > 0


@pytest.mark.parametrize("model", ["identity", "add_sub_onnx"])
def test_perf_analyzer_streaming(server, model):
    point, output = run_perf_analyzer(
        model, server.grpc_url, protocol="grpc", concurrency=2, measurement_ms=500,
        stability=100, extra=["--streaming"],
    )  # fmt: skip
    assert point.throughput > 0


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_system_shared_memory(server, protocol):
    """Inputs and outputs in system shared memory: perf_analyzer checks every answer (it
    fails, exit 99, on an output that carries a `parameters` block without
    `binary_data_size`, which Triton never sends for shared-memory outputs)."""
    url = server.http_url if protocol == "http" else server.grpc_url
    point, output = run_perf_analyzer(
        "add_sub_onnx", url, protocol=protocol, concurrency=2, measurement_ms=500,
        stability=100, extra=["--shared-memory=system"],
    )  # fmt: skip
    assert point.throughput > 0
    assert int(output.split("Inference count:")[1].split()[0]) > 0


def test_perf_analyzer_streaming_with_shared_memory(server):
    point, _ = run_perf_analyzer(
        "add_sub_onnx", server.grpc_url, protocol="grpc", concurrency=2, measurement_ms=500,
        stability=100, extra=["--streaming", "--shared-memory=system"],
    )  # fmt: skip
    assert point.throughput > 0
