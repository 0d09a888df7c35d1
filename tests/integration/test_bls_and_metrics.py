"""BLS calls between models of a real server, and the Prometheus metrics endpoint."""

from __future__ import annotations

import concurrent.futures
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import copy_test_model

pytestmark = pytest.mark.python_backend


@pytest.fixture(scope="module")
def server(launch, tmp_path_factory):
    repo = tmp_path_factory.mktemp("bls_repo")
    copy_test_model(repo, "add_sub")
    copy_test_model(repo, "bls_add_sub")
    copy_test_model(repo, "bls_via_helper")
    copy_test_model(repo, "error_response")
    return launch(repo)


def _bls_inputs(target: str) -> tuple[list[httpclient.InferInput], np.ndarray, np.ndarray]:
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    b = np.array([10, 20, 30, 40], dtype=np.float32)
    inputs = [
        httpclient.InferInput("INPUT0", [4], "FP32"),
        httpclient.InferInput("INPUT1", [4], "FP32"),
        httpclient.InferInput("TARGET", [1], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    inputs[2].set_data_from_numpy(np.array([target.encode()], dtype=np.object_))
    return inputs, a, b


def test_bls_exec_reaches_the_other_model(server):
    client = httpclient.InferenceServerClient(server.http_url)
    inputs, a, b = _bls_inputs("add_sub")
    result = client.infer("bls_add_sub", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    stats = client.get_inference_statistics("add_sub")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] >= 1


def test_bls_error_is_returned_not_raised(server):
    client = httpclient.InferenceServerClient(server.http_url)
    inputs, _, _ = _bls_inputs("no_such_model")
    with pytest.raises(InferenceServerException, match="BLS call failed.*no_such_model"):
        client.infer("bls_add_sub", inputs)


def test_blocking_bls_from_a_helper_module_never_hangs_the_server(server):
    """A model that runs inline (its own file shows no BLS) and then makes a blocking BLS
    call from a helper module: at most that one request fails, with the reason; the
    instance moves to its own thread and later BLS calls succeed. (Before: the server's
    event loop waited for itself and every request hung.)"""
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=20)
    local, a, b = _bls_inputs("")
    for _ in range(50):  # cheap executions: the scheduler starts running them inline
        np.testing.assert_array_equal(
            client.infer("bls_via_helper", local).as_numpy("OUTPUT0"), a + b
        )
    failures = []
    for _ in range(3):
        try:
            result = client.infer("bls_via_helper", _bls_inputs("add_sub")[0])
        except InferenceServerException as exc:
            failures.append(str(exc))
            continue
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    assert len(failures) <= 1, failures
    assert all("event loop thread" in f and "own thread" in f for f in failures), failures
    assert client.is_server_live()


def test_concurrent_bls_requests(server):
    def one(_: int) -> np.ndarray:
        client = httpclient.InferenceServerClient(server.http_url)
        inputs, a, b = _bls_inputs("add_sub")
        np.testing.assert_array_equal(
            client.infer("bls_add_sub", inputs).as_numpy("OUTPUT0"), a + b
        )
        return a

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert len(list(pool.map(one, range(32)))) == 32


def _metrics(server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    # Triton names counters without "_total"; the parser adds it to sample names, so
    # samples are keyed by their family's name.
    assert "\nnv_inference_request_success{" in text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(family.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_agree_with_statistics(server):
    client = httpclient.InferenceServerClient(server.http_url)
    a = np.ones(4, dtype=np.float32)
    inputs = [httpclient.InferInput(n, [4], "FP32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(a)
    for _ in range(5):
        client.infer("add_sub", inputs)
    error_inputs = [httpclient.InferInput("INPUT0", [1], "FP32")]
    error_inputs[0].set_data_from_numpy(np.ones(1, dtype=np.float32))
    with pytest.raises(InferenceServerException):
        client.infer("error_response", error_inputs)

    stats = client.get_inference_statistics("add_sub")["model_stats"][0]
    metrics = _metrics(server)
    labels = (("model", "add_sub"), ("version", "1"))
    success = stats["inference_stats"]["success"]
    assert metrics[("nv_inference_request_success", labels)] == success["count"] >= 5
    assert metrics[("nv_inference_count", labels)] == stats["inference_count"]
    assert metrics[("nv_inference_exec_count", labels)] == stats["execution_count"]
    assert metrics[("nv_inference_queue_duration_us", labels)] == (
        stats["inference_stats"]["queue"]["ns"] // 1000
    )
    assert metrics[("nv_inference_pending_request_count", labels)] == 0
    assert metrics[("nv_model_load_duration_secs", labels)] > 0
    failure = (("model", "error_response"), ("reason", "BACKEND"), ("version", "1"))
    assert metrics[("nv_inference_request_failure", failure)] >= 1
    assert metrics[("nv_cpu_memory_total_bytes", ())] > 0
    assert 0.0 <= metrics[("nv_cpu_utilization", ())] <= 1.0
