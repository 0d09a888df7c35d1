"""Python-backend (``model.py``) models over HTTP, plus concurrency and graceful shutdown.

The models live in ``tests/models`` and are written the way Triton users write them.
"""

from __future__ import annotations

import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import copy_test_model, raw_request, wait_until

pytestmark = pytest.mark.python_backend


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("python-repo")
    for model in (
        "add_sub", "identity_fp32", "identity_bytes", "params_echo", "error_response",
        "raising", "classifier",
    ):
        copy_test_model(root, model)
    copy_test_model(root, "slow", "slow1")
    copy_test_model(root, "slow", "slow2", replace={"count: 1": "count: 2"})
    return root


@pytest.fixture(scope="module")
def server(launch, repo):
    return launch(repo)


def _fp32_input(name: str, data: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    inp = httpclient.InferInput(name, list(data.shape), "FP32")
    inp.set_data_from_numpy(data, binary_data=binary)
    return inp


# -- add_sub (Triton's example) ---------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_add_sub(client, binary):
    a = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    b = np.array([0.5, -1.0, 10.0, 4.0], dtype=np.float32)
    result = client.infer(
        "add_sub",
        [_fp32_input("INPUT0", a, binary), _fp32_input("INPUT1", b, binary)],
        outputs=[
            httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
            httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary),
        ],
    )
    response = result.get_response()
    assert response["model_name"] == "add_sub"
    assert response["model_version"] == "1"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_add_sub_outputs_subset(client):
    a = np.ones(4, dtype=np.float32)
    result = client.infer(
        "add_sub",
        [_fp32_input("INPUT0", a), _fp32_input("INPUT1", a)],
        outputs=[httpclient.InferRequestedOutput("OUTPUT1")],
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), np.zeros(4, np.float32))


def test_add_sub_metadata_and_config(client):
    metadata = client.get_model_metadata("add_sub")
    assert metadata["platform"] == "python"
    assert metadata["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [4]}
    config = client.get_model_config("add_sub")
    assert config["backend"] == "python"
    assert config["max_batch_size"] == 0


# -- identity over FP32 and BYTES ----------------------------------------------------


def test_identity_fp32_batch(client):
    data = np.random.default_rng(0).standard_normal((3, 7)).astype(np.float32)
    result = client.infer("identity_fp32", [_fp32_input("INPUT0", data)])
    assert result.get_response()["outputs"][0]["shape"] == [3, 7]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_identity_bytes(client, binary):
    values = ["plain", "", "ünïcödé", "with space"]
    data = np.array(values, dtype=np.object_)
    inp = httpclient.InferInput("INPUT0", [4], "BYTES")
    inp.set_data_from_numpy(data, binary_data=binary)
    result = client.infer(
        "identity_bytes", [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary)]
    )
    got = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("OUTPUT0")]
    assert got == values


def test_identity_bytes_arbitrary_binary(client):
    values = [b"\x00\x01\x02", b"\xff\xfe", b"", b"ok"]
    inp = httpclient.InferInput("INPUT0", [4], "BYTES")
    inp.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=True)
    result = client.infer("identity_bytes", [inp])
    assert list(result.as_numpy("OUTPUT0")) == values


# -- request parameters ----------------------------------------------------------------


def test_request_parameters_reach_the_model(client):
    data = np.ones(2, dtype=np.float32)
    params = {"temperature": 0.5, "tag": "abc", "flag": True, "count": 3}
    result = client.infer("params_echo", [_fp32_input("INPUT0", data)], parameters=params)
    echoed = json.loads(result.as_numpy("PARAMETERS")[0])
    assert echoed == params
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


# -- errors from models ---------------------------------------------------------------


def test_error_response(client, server):
    with pytest.raises(InferenceServerException) as info:
        client.infer("error_response", [_fp32_input("INPUT0", np.ones(3, np.float32))])
    assert "error_response model rejects 3 values" in info.value.message()
    assert info.value.status() in ("400", "500")


def test_raising_model(client, server):
    with pytest.raises(InferenceServerException) as info:
        client.infer("raising", [_fp32_input("INPUT0", np.ones(3, np.float32))])
    assert "execute failed on purpose" in info.value.message()
    assert info.value.status() in ("400", "500")
    # the server and the model keep working
    assert client.is_model_ready("raising")
    data = np.ones((1, 3), np.float32)
    result = client.infer("identity_fp32", [_fp32_input("INPUT0", data)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_model_errors_are_counted_as_failures(client):
    def fails() -> int:
        stats = client.get_inference_statistics("error_response")["model_stats"][0]
        assert stats["inference_stats"]["success"]["count"] == 0
        return stats["inference_stats"]["fail"]["count"]

    before = fails()
    with pytest.raises(InferenceServerException):
        client.infer("error_response", [_fp32_input("INPUT0", np.ones(2, np.float32))])
    assert fails() == before + 1


# -- classification with a labels file --------------------------------------------


def test_classification(client):
    logits = np.array([[0.0, 3.0, 1.0, 2.0, -1.0]], dtype=np.float32)
    result = client.infer(
        "classifier",
        [_fp32_input("INPUT0", logits)],
        outputs=[httpclient.InferRequestedOutput("OUTPUT0", class_count=3)],
    )
    got = [v.decode() for v in result.as_numpy("OUTPUT0").ravel()]
    assert [entry.split(":", 1)[1] for entry in got] == ["1:bravo", "3:delta", "2:charlie"]
    scores = [float(entry.split(":")[0]) for entry in got]
    assert scores == sorted(scores, reverse=True)
    assert 0 < scores[0] < 1


# -- instance_group count and concurrency ---------------------------------------------


def _overlap(windows: list[tuple[float, float]]) -> float:
    """Seconds during which both executions ran (negative: the gap between them)."""
    (s1, e1), (s2, e2) = windows
    return min(e1, e2) - max(s1, s2)


def test_two_instances_execute_concurrently(server):
    # one client per thread: tritonclient's sync client is not thread-safe
    clients = [httpclient.InferenceServerClient(server.http_url) for _ in range(2)]
    try:
        barrier = threading.Barrier(2)

        def one(i: int) -> tuple[float, float]:
            data = np.array([float(i)], dtype=np.float32)
            barrier.wait()
            result = clients[i].infer("slow2", [_fp32_input("INPUT0", data)])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
            start, end = result.as_numpy("WINDOW")
            return float(start), float(end)

        with ThreadPoolExecutor(2) as pool:
            windows = list(pool.map(one, range(2)))
    finally:
        for c in clients:
            c.close()
    # each execution sleeps 0.2 s; with two instances they overlap for most of it
    assert _overlap(windows) > 0.1, windows


def test_two_instances_are_reported(client):
    config = client.get_model_config("slow2")
    assert [g["count"] for g in config["instance_group"]] == [2]
    stats = client.get_inference_statistics("slow2")["model_stats"][0]
    assert stats["execution_count"] == 2


def test_one_instance_executes_one_at_a_time(server):
    clients = [httpclient.InferenceServerClient(server.http_url) for _ in range(2)]
    try:
        barrier = threading.Barrier(2)

        def one(i: int) -> tuple[float, float]:
            barrier.wait()
            result = clients[i].infer(
                "slow1", [_fp32_input("INPUT0", np.array([1.0], np.float32))]
            )
            start, end = result.as_numpy("WINDOW")
            return float(start), float(end)

        with ThreadPoolExecutor(2) as pool:
            windows = list(pool.map(one, range(2)))
    finally:
        for c in clients:
            c.close()
    assert _overlap(windows) <= 0, windows


def test_python_model_statistics(client):
    client.infer("identity_fp32", [_fp32_input("INPUT0", np.ones((1, 2), np.float32))])
    stats = client.get_inference_statistics("identity_fp32")["model_stats"][0]
    inference = stats["inference_stats"]
    assert inference["success"]["count"] >= 1
    for key in ("queue", "compute_infer"):
        assert inference[key]["ns"] > 0, key


# -- graceful shutdown ----------------------------------------------------------------


def test_sigterm_lets_in_flight_request_finish(launch, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    repo = tmp_path / "repo"
    copy_test_model(
        repo,
        "slow",
        replace={'string_value: "0.2"': 'string_value: "1.0"'},
        config_extra=f'parameters: {{ key: "marker_dir" value: {{ string_value: "{markers}" }} }}\n',
    )
    server = launch(repo)
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
    outcome: dict[str, object] = {}

    def request() -> None:
        try:
            data = np.array([42.0], dtype=np.float32)
            outcome["result"] = client.infer("slow", [_fp32_input("INPUT0", data)])
        except Exception as exc:  # reported by the assertions below
            outcome["error"] = exc

    thread = threading.Thread(target=request)
    thread.start()
    try:
        wait_until(lambda: any(markers.iterdir()), what="the slow execution to start")
        assert "result" not in outcome and "error" not in outcome
        server.process.send_signal(signal.SIGTERM)
        thread.join(30)
        assert not thread.is_alive()
        assert "error" not in outcome, outcome.get("error")
        result = outcome["result"]
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [42.0])
        assert server.process.wait(30) == 0, server.log()
        with pytest.raises(OSError):
            raw_request(server, "GET", "/v2/health/live")
    finally:
        client.close()
