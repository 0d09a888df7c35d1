"""Triton's ``dynamic_batching`` against a real server with the real ``tritonclient``.

Preferred batch sizes, queue size limits, queue timeouts (REJECT with the request's
``timeout`` parameter), priority levels and several instances, all with copies of the
``slow`` Python model (it sleeps per execution and reports its execution window, so
requests pile up in the queue while it runs).
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import (
    copy_test_model,
    pending_requests,
    raw_request,
    wait_until,
)

pytestmark = pytest.mark.python_backend

#: Models: name -> (sleep_s, max_batch_size, instance count, dynamic_batching body).
MODELS = {
    "preferred": (
        "1.0",
        8,
        1,
        "preferred_batch_size: [ 2, 4 ] max_queue_delay_microseconds: 2000000",
    ),
    "two_instances": ("1.5", 4, 2, "max_queue_delay_microseconds: 2000000"),
    "queue_limit": ("2.0", 1, 1, "default_queue_policy { max_queue_size: 1 }"),
    "timeouts": ("1.0", 1, 1, "default_queue_policy { allow_timeout_override: true }"),
    "no_override": ("1.0", 1, 1, "default_queue_policy { max_queue_size: 4 }"),
    "priorities": ("0.5", 1, 1, "priority_levels: 2 default_priority_level: 2"),
    "poison": ("1.0", 8, 1, "max_queue_delay_microseconds: 500000"),
}


@pytest.fixture(scope="module")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("batching-markers")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, markers: Path) -> Path:
    root = tmp_path_factory.mktemp("batching-repo")
    for name, (sleep_s, max_batch, count, batching) in MODELS.items():
        model_markers = markers / name
        model_markers.mkdir()
        copy_test_model(
            root,
            "slow",
            name,
            replace={
                "max_batch_size: 0": f"max_batch_size: {max_batch}",
                "count: 1": f"count: {count}",
                'string_value: "0.2"': f'string_value: "{sleep_s}"',
            },
            config_extra=(
                f'parameters: {{ key: "marker_dir" value: {{ string_value: "{model_markers}" }} }}\n'
                f"dynamic_batching {{ {batching} }}\n"
            ),
        )
    return root


@pytest.fixture(scope="module")
def server(launch, repo):
    return launch(repo)


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server.http_url, concurrency=32)
    yield c
    c.close()


def _input(value: float, batch: int = 1) -> list[httpclient.InferInput]:
    data = np.full((batch, 1), value, dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    return [inp]


def _started(markers: Path, model: str) -> int:
    return len(list((markers / model).iterdir()))


def _stats(client, model: str) -> dict:
    return client.get_inference_statistics(model)["model_stats"][0]


def _busy(client, markers: Path, model: str, batch: int = 1):
    """Start one request and wait until the model executes it; its async handle."""
    before = _started(markers, model)
    handle = client.async_infer(model, _input(-1.0, batch))
    wait_until(lambda: _started(markers, model) > before, what=f"{model} to start executing")
    return handle


def test_preferred_batch_sizes_show_in_batch_stats(client, server, markers):
    busy = _busy(client, markers, "preferred")
    handles = [client.async_infer("preferred", _input(float(i))) for i in range(10)]
    # all ten wait in the queue while the first execution sleeps
    wait_until(lambda: pending_requests(server, "preferred") == 11, what="ten queued requests")
    results = [h.get_result() for h in handles]
    busy.get_result()
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [[float(i)]])
    stats = _stats(client, "preferred")
    sizes = {entry["batch_size"]: entry["compute_infer"]["count"] for entry in stats["batch_stats"]}
    # the ten queued requests go as 4 + 4 + 2 (largest preferred size reached each time)
    assert sizes == {1: 1, 4: 2, 2: 1}, stats["batch_stats"]
    assert stats["inference_count"] == 11
    assert stats["execution_count"] == 4
    assert stats["inference_stats"]["success"]["count"] == 11


def test_batches_form_with_two_instances(client, server, markers):
    # full batches: they go without waiting for the queue delay
    first = _busy(client, markers, "two_instances", batch=4)
    second = _busy(client, markers, "two_instances", batch=4)  # on the other instance
    handles = [client.async_infer("two_instances", _input(float(i))) for i in range(8)]
    wait_until(
        lambda: pending_requests(server, "two_instances") == 10, what="eight queued requests"
    )
    results = [h.get_result() for h in handles]
    first.get_result()
    second.get_result()
    windows = [tuple(r.as_numpy("WINDOW").ravel()) for r in results]
    # two full batches of 4, executed on the two instances at the same time
    assert len(set(windows)) == 2, windows
    (s1, e1), (s2, e2) = sorted({(w[0], w[1]) for w in windows})
    assert s2 < e1, "the two batches did not overlap"
    stats = _stats(client, "two_instances")
    sizes = {entry["batch_size"]: entry["compute_infer"]["count"] for entry in stats["batch_stats"]}
    assert sizes == {4: 4}, stats["batch_stats"]
    assert stats["execution_count"] == 4 and stats["inference_count"] == 16


def test_full_queue_rejects_with_503(client, server, markers):
    busy = _busy(client, markers, "queue_limit")
    queued = client.async_infer("queue_limit", _input(1.0))
    wait_until(lambda: pending_requests(server, "queue_limit") == 2, what="one queued request")
    with pytest.raises(InferenceServerException) as info:
        client.infer("queue_limit", _input(2.0))
    assert info.value.status() == "503"
    assert "Exceeds maximum queue size" in info.value.message()
    queued.get_result()
    busy.get_result()
    stats = _stats(client, "queue_limit")
    assert stats["inference_stats"]["fail"]["count"] == 1
    assert stats["inference_stats"]["success"]["count"] == 2
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    rejected = re.search(
        r'^nv_inference_request_failure\{model="queue_limit",reason="REJECTED",version="1"\} (\S+)$',
        text,
        re.MULTILINE,
    )
    assert rejected and float(rejected.group(1)) == 1, "the rejection is counted as REJECTED"


def test_request_timeout_rejects_queued_request(client, server, markers):
    busy = _busy(client, markers, "timeouts")
    with pytest.raises(InferenceServerException) as info:
        client.infer("timeouts", _input(1.0), timeout=50_000)  # 50 ms, in microseconds
    assert info.value.status() == "503"
    assert "Request timeout expired" in info.value.message()
    # rejected while the instance was still busy with the first request
    assert pending_requests(server, "timeouts") == 1
    busy.get_result()
    # a request that does not wait long enough to time out is served
    client.infer("timeouts", _input(2.0), timeout=60_000_000)
    stats = _stats(client, "timeouts")
    assert stats["inference_stats"]["fail"]["count"] == 1
    assert stats["execution_count"] == 2


def test_request_timeout_is_ignored_without_allow_timeout_override(client, markers):
    busy = _busy(client, markers, "no_override")
    result = client.infer("no_override", _input(1.0), timeout=1_000)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [[1.0]])
    busy.get_result()


def test_high_priority_overtakes_queued_requests(client, server, markers):
    busy = _busy(client, markers, "priorities")
    low = [client.async_infer("priorities", _input(float(i)), priority=2) for i in range(2)]
    default = client.async_infer("priorities", _input(5.0))  # default level: 2
    wait_until(
        lambda: pending_requests(server, "priorities") == 4, what="three queued low requests"
    )
    high = client.async_infer("priorities", _input(9.0), priority=1)
    high_start = high.get_result().as_numpy("WINDOW").ravel()[0]
    low_starts = [h.get_result().as_numpy("WINDOW").ravel()[0] for h in [*low, default]]
    busy.get_result()
    assert all(high_start < start for start in low_starts), (high_start, low_starts)
    # the low ones kept their arrival order
    assert low_starts == sorted(low_starts)
    with pytest.raises(InferenceServerException, match="priority 3"):
        client.infer("priorities", _input(1.0), priority=3)


def test_grpc_priority_and_timeout_parameters(client, server, markers):
    import tritonclient.grpc as grpcclient

    def grpc_input(value: float) -> list[grpcclient.InferInput]:
        inp = grpcclient.InferInput("INPUT0", [1, 1], "FP32")
        inp.set_data_from_numpy(np.full((1, 1), value, dtype=np.float32))
        return [inp]

    with grpcclient.InferenceServerClient(server.grpc_url) as grpc:
        with pytest.raises(InferenceServerException, match="priority 3") as info:
            grpc.infer("priorities", grpc_input(1.0), priority=3)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        busy = _busy(client, markers, "timeouts")
        with pytest.raises(InferenceServerException, match="Request timeout expired") as info:
            grpc.infer("timeouts", grpc_input(1.0), timeout=50_000)
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        busy.get_result()
        result = grpc.infer("priorities", grpc_input(4.0), priority=1)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [[4.0]])


def test_nested_parameters_fail_only_their_request(client, server, markers):
    """A request whose parameters nest 1,000 deep is refused on decode (400, Triton's
    message); the other clients' requests queued with it are batched and succeed."""
    busy = _busy(client, markers, "poison")
    handles = [client.async_infer("poison", _input(float(i))) for i in range(3)]
    wait_until(lambda: pending_requests(server, "poison") == 4, what="three queued requests")
    deep = '{"a":' * 1000 + "1" + "}" * 1000
    body = (
        '{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,1],"data":[7]}],'
        '"parameters":{"deep":' + deep + "}}"
    )
    response = raw_request(server, "POST", "/v2/models/poison/infer", body)
    assert response.status == 400, response
    assert response.error() == (
        "parameter 'deep' has invalid type. It should be either 'int', 'bool', or 'string'."
    )
    for i, handle in enumerate(handles):
        np.testing.assert_array_equal(handle.get_result().as_numpy("OUTPUT0"), [[float(i)]])
    busy.get_result()
