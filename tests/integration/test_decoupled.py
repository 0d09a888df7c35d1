"""Decoupled Python models over gRPC ModelStreamInfer (Triton's streaming client)."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from openeas.testing.server import ServerProcess
from tests.integration.conftest import binary_infer_body, copy_test_model, raw_request, wait_until

pytestmark = pytest.mark.python_backend

Result = tuple[Any, InferenceServerException | None]


@pytest.fixture(scope="module")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("decoupled_markers")


@pytest.fixture(scope="module")
def server(launch: Any, markers: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    repo = tmp_path_factory.mktemp("decoupled_repo")
    marker = f'\nparameters: {{ key: "marker_dir" value: {{ string_value: "{markers}" }} }}\n'
    copy_test_model(repo, "repeat_decoupled", config_extra=marker)
    copy_test_model(repo, "decoupled_cancel", config_extra=marker)
    copy_test_model(repo, "identity_fp32")
    return launch(repo)


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def _callback(results: queue.Queue[Result], result: Any, error: Any) -> None:
    results.put((result, error))


def _repeat_inputs(data: np.ndarray, repeat: int) -> list[grpcclient.InferInput]:
    in0 = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    in0.set_data_from_numpy(data)
    count = grpcclient.InferInput("REPEAT", [1], "INT32")
    count.set_data_from_numpy(np.array([repeat], dtype=np.int32))
    return [in0, count]


def _collect(results: queue.Queue[Result], count: int, timeout: float = 20) -> list[Result]:
    return [results.get(timeout=timeout) for _ in range(count)]


def _final(result: Any) -> bool:
    params = result.get_response().parameters
    assert "triton_final_response" in params, params
    return params["triton_final_response"].bool_param


def _stats(client: grpcclient.InferenceServerClient, model: str) -> dict[str, Any]:
    return client.get_inference_statistics(model, as_json=True)["model_stats"][0]


def _count(client: grpcclient.InferenceServerClient, model: str, kind: str) -> int:
    """The ``success`` or ``fail`` request count of ``model``."""
    return int(_stats(client, model)["inference_stats"][kind].get("count", 0))


def test_repeat_sends_every_response_in_order(client: grpcclient.InferenceServerClient) -> None:
    data = np.arange(5, dtype=np.float32)
    results: queue.Queue[Result] = queue.Queue()
    before = _count(client, "repeat_decoupled", "success")
    client.start_stream(callback=partial(_callback, results))
    try:
        client.async_stream_infer("repeat_decoupled", _repeat_inputs(data, 4), request_id="r1")
        got = _collect(results, 4)
    finally:
        client.stop_stream()
    assert results.empty()  # a bare final flag sends nothing without empty final responses
    for index, (result, error) in enumerate(got):
        assert error is None
        response = result.get_response()
        assert response.id == "r1" and response.model_name == "repeat_decoupled"
        assert response.model_version == "1"
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
        assert result.as_numpy("INDEX").tolist() == [index]
        assert "triton_final_response" not in response.parameters
    wait_until(
        lambda: _count(client, "repeat_decoupled", "success") > before,
        what="the request to be counted",
    )
    assert _count(client, "repeat_decoupled", "success") == before + 1
    wait_until(
        lambda: int(_stats(client, "repeat_decoupled").get("execution_count", 0)) >= 1,
        what="the execution to be counted",
    )


def test_empty_final_response(client: grpcclient.InferenceServerClient) -> None:
    data = np.ones(3, dtype=np.float32)
    results: queue.Queue[Result] = queue.Queue()
    client.start_stream(callback=partial(_callback, results))
    try:
        client.async_stream_infer(
            "repeat_decoupled",
            _repeat_inputs(data, 2),
            request_id="bare",
            enable_empty_final_response=True,
        )
        bare = _collect(results, 3)
        client.async_stream_infer(
            "repeat_decoupled",
            _repeat_inputs(data, 2),
            request_id="with_last",
            enable_empty_final_response=True,
            parameters={"final_with_last": True},
        )
        with_last = _collect(results, 2)
        client.async_stream_infer(
            "repeat_decoupled",
            _repeat_inputs(data, 0),
            request_id="none",
            enable_empty_final_response=True,
        )
        (only,) = _collect(results, 1)
    finally:
        client.stop_stream()
    assert [error for _, error in bare + with_last] == [None] * 5
    assert [_final(r) for r, _ in bare] == [False, False, True]
    assert bare[2][0].get_response().id == "bare"
    assert not bare[2][0].get_response().outputs
    assert [_final(r) for r, _ in with_last] == [False, True]
    assert with_last[1][0].as_numpy("INDEX").tolist() == [1]
    assert only[1] is None and _final(only[0]) and only[0].get_response().id == "none"
    assert results.empty()


def test_concurrent_requests_on_one_stream(client: grpcclient.InferenceServerClient) -> None:
    results: queue.Queue[Result] = queue.Queue()
    client.start_stream(callback=partial(_callback, results))
    try:
        for n in range(4):
            client.async_stream_infer(
                "repeat_decoupled",
                _repeat_inputs(np.full(2, n, dtype=np.float32), n + 1),
                request_id=f"req{n}",
                parameters={"delay_ms": 5},
            )
        got = _collect(results, 1 + 2 + 3 + 4)
    finally:
        client.stop_stream()
    by_id: dict[str, list[int]] = {}
    for result, error in got:
        assert error is None
        response = result.get_response()
        n = int(response.id[3:])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full(2, n, np.float32))
        by_id.setdefault(response.id, []).append(int(result.as_numpy("INDEX")[0]))
    assert by_id == {f"req{n}": list(range(n + 1)) for n in range(4)}


def test_error_response_keeps_the_request_open(client: grpcclient.InferenceServerClient) -> None:
    results: queue.Queue[Result] = queue.Queue()
    before = _count(client, "repeat_decoupled", "fail")
    client.start_stream(callback=partial(_callback, results))
    try:
        client.async_stream_infer(
            "repeat_decoupled",
            _repeat_inputs(np.zeros(1, np.float32), 3),
            request_id="err",
            parameters={"error_at": 1},
        )
        got = _collect(results, 3)
    finally:
        client.stop_stream()
    assert got[0][1] is None and got[2][1] is None
    assert got[1][0] is None and "error at 1" in str(got[1][1])
    assert got[2][0].as_numpy("INDEX").tolist() == [2]
    assert _count(client, "repeat_decoupled", "fail") == before + 1


def test_send_after_final_raises_in_the_model(
    client: grpcclient.InferenceServerClient, markers: Path
) -> None:
    results: queue.Queue[Result] = queue.Queue()
    client.start_stream(callback=partial(_callback, results))
    try:
        client.async_stream_infer(
            "repeat_decoupled", _repeat_inputs(np.zeros(1, np.float32), 1), request_id="twice"
        )
        _collect(results, 1)
    finally:
        client.stop_stream()
    marker = markers / "after-final-twice"
    wait_until(marker.exists, what=marker)
    assert marker.read_text() == (
        "TritonError: Unable to send response. Response sender has been closed."
    )


def test_non_decoupled_model_on_the_stream(client: grpcclient.InferenceServerClient) -> None:
    data = np.arange(4, dtype=np.float32).reshape(1, 4)
    inp = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
    inp.set_data_from_numpy(data)
    results: queue.Queue[Result] = queue.Queue()
    client.start_stream(callback=partial(_callback, results))
    try:
        client.async_stream_infer("identity_fp32", [inp], request_id="plain")
        client.async_stream_infer(
            "identity_fp32", [inp], request_id="flagged", enable_empty_final_response=True
        )
        got = {r.get_response().id: r for r, e in _collect(results, 2) if e is None}
    finally:
        client.stop_stream()
    assert set(got) == {"plain", "flagged"}
    np.testing.assert_array_equal(got["plain"].as_numpy("OUTPUT0"), data)
    assert "triton_final_response" not in got["plain"].get_response().parameters
    assert _final(got["flagged"])
    assert results.empty()


def test_unknown_model_on_the_stream(client: grpcclient.InferenceServerClient) -> None:
    results: queue.Queue[Result] = queue.Queue()
    client.start_stream(callback=partial(_callback, results))
    try:
        client.async_stream_infer(
            "no_such_model", _repeat_inputs(np.zeros(1, np.float32), 1), request_id="x"
        )
        ((result, error),) = _collect(results, 1)
    finally:
        client.stop_stream()
    assert result is None and error is not None and "no_such_model" in str(error)


def test_unary_grpc_infer_is_refused(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("repeat_decoupled", _repeat_inputs(np.zeros(1, np.float32), 1))
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "ModelInfer RPC doesn't support models with decoupled transaction policy" in str(
        info.value
    )


def test_http_infer_is_refused(server: ServerProcess) -> None:
    body, headers = binary_infer_body(
        [
            ("INPUT0", np.zeros(2, np.float32), "FP32"),
            ("REPEAT", np.array([1], np.int32), "INT32"),
        ]
    )
    response = raw_request(server, "POST", "/v2/models/repeat_decoupled/infer", body, headers)
    assert response.status == 501, response
    assert response.error() == (
        "HTTP end point doesn't support models with decoupled transaction policy"
    )
    config = json.loads(raw_request(server, "GET", "/v2/models/repeat_decoupled/config").body)
    assert config["model_transaction_policy"] == {"decoupled": True}


def test_cancelling_the_stream_cancels_the_request(
    client: grpcclient.InferenceServerClient, markers: Path
) -> None:
    results: queue.Queue[Result] = queue.Queue()
    client.start_stream(callback=partial(_callback, results))
    try:
        for rid in ("c1", "c1b"):
            client.async_stream_infer(
                "decoupled_cancel", [_input0(np.ones(2, np.float32))], request_id=rid
            )
        # both run on the one instance: an execution ends when execute returns,
        # while its request stays open
        got = _collect(results, 2)
        assert sorted(r.get_response().id for r, e in got if e is None) == ["c1", "c1b"]
    finally:
        client.stop_stream(cancel_requests=True)
    for rid in ("c1", "c1b"):
        marker = markers / f"cancelled-{rid}"
        wait_until(marker.exists, what=marker)
        assert not (markers / f"timeout-{rid}").exists()
    # the instance is free again: the next request runs
    results2: queue.Queue[Result] = queue.Queue()
    client.start_stream(callback=partial(_callback, results2))
    try:
        client.async_stream_infer(
            "decoupled_cancel", [_input0(np.ones(2, np.float32))], request_id="c2"
        )
        ((second, error),) = _collect(results2, 1)
        assert error is None and second.get_response().id == "c2"
    finally:
        client.stop_stream(cancel_requests=True)
    wait_until((markers / "cancelled-c2").exists, what="cancelled-c2")


def _input0(data: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    return inp
