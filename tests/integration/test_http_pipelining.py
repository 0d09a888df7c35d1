"""HTTP/1.1 pipelining on the processor: inference requests run concurrently, answers in order.

Raw sockets, so that the requests really arrive back to back on one connection (client
libraries do not pipeline).  Concurrency is shown by the dynamic batcher: pipelined
requests that ran one at a time could never share a batch.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from openeas.testing.server import ServerProcess
from tests.integration.conftest import (
    copy_test_model,
    pending_requests,
    raw_request,
    read_response,
    request_bytes,
    wait_until,
)

pytestmark = pytest.mark.python_backend

#: Batches of four, and a queue delay long enough that a lone request would time the
#: test out: only requests that are in the queue together make a batch.
BATCH4 = "dynamic_batching { preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 60000000 }\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipelining-repo")
    copy_test_model(root, "identity_fp32", "batch4", config_extra=BATCH4)
    copy_test_model(root, "identity_fp32")
    copy_test_model(root, "identity_fp32", "later")
    return root


@pytest.fixture(scope="module")
def server(launch, repo: Path) -> ServerProcess:
    return launch(
        repo,
        "--model-control-mode=explicit",
        "--load-model=batch4",
        "--load-model=identity_fp32",
    )


@pytest.fixture
def conn(server: ServerProcess) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
    yield sock
    sock.close()


def _infer(model: str, value: float) -> bytes:
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [value]}]}
    ).encode()
    return request_bytes("POST", f"/v2/models/{model}/infer", body)


def _output(body: bytes) -> list[float]:
    return json.loads(body)["outputs"][0]["data"]


def _batch_stats(server: ServerProcess, model: str) -> dict[int, int]:
    """Executions by batch size."""
    response = raw_request(server, "GET", f"/v2/models/{model}/stats")
    assert response.status == 200, response
    stats = response.json()["model_stats"][0]["batch_stats"]
    return {s["batch_size"]: s["compute_infer"]["count"] for s in stats}


def test_pipelined_infers_run_together_and_answer_in_order(
    conn: socket.socket, server: ServerProcess
) -> None:
    conn.sendall(b"".join(_infer("batch4", float(v)) for v in (1, 2, 3, 4)))
    reader = conn.makefile("rb")
    answers = [read_response(reader) for _ in range(4)]
    assert [(status, _output(body)) for status, _, body in answers] == [
        (200, [1.0]), (200, [2.0]), (200, [3.0]), (200, [4.0])
    ]  # fmt: skip
    assert _batch_stats(server, "batch4") == {4: 1}


def test_other_requests_wait_for_the_ones_before_them(conn: socket.socket) -> None:
    # "later" is not loaded: its infer must wait for the load pipelined before it
    conn.sendall(
        _infer("identity_fp32", 1.0)
        + request_bytes("POST", "/v2/repository/models/later/load")
        + _infer("later", 2.0)
        + request_bytes("GET", "/v2/models/later/ready")
        + _infer("identity_fp32", 3.0)
    )
    reader = conn.makefile("rb")
    first, load, second, ready, third = (read_response(reader) for _ in range(5))
    assert (first[0], _output(first[2])) == (200, [1.0])
    assert load[0] == 200, load
    assert (second[0], _output(second[2])) == (200, [2.0])
    assert ready[0] == 200
    assert (third[0], _output(third[2])) == (200, [3.0])


def test_requests_after_connection_close_are_not_served(conn: socket.socket) -> None:
    conn.sendall(
        _infer("identity_fp32", 1.0)
        + request_bytes(
            "POST",
            "/v2/models/identity_fp32/infer",
            json.dumps(
                {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1], "data": [2]}]}
            ).encode(),
            {"Connection": "close"},
        )
        + _infer("identity_fp32", 3.0)
    )
    reader = conn.makefile("rb")
    first, last = read_response(reader), read_response(reader)
    assert (first[0], _output(first[2])) == (200, [1.0])
    assert (last[0], last[1]["connection"], _output(last[2])) == (200, "close", [2.0])
    assert reader.read() == b""  # closed: the third request got no answer


def test_client_gone_with_pipelined_requests_in_flight(server: ServerProcess) -> None:
    before = _batch_stats(server, "batch4")
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
    sock.sendall(_infer("batch4", 5.0) + _infer("batch4", 6.0))
    # both wait in the queue (the batch waits for four) when the client goes away
    wait_until(lambda: pending_requests(server, "batch4") == 2, what="two queued requests")
    sock.close()
    wait_until(lambda: pending_requests(server, "batch4") == 0, what="the queue to drop them")
    # the server goes on serving: four new requests make a batch of their own
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as other:
        other.sendall(b"".join(_infer("batch4", float(v)) for v in (7, 8, 9, 10)))
        reader = other.makefile("rb")
        answers = [read_response(reader) for _ in range(4)]
    assert [(status, _output(body)) for status, _, body in answers] == [
        (200, [7.0]), (200, [8.0]), (200, [9.0]), (200, [10.0])
    ]  # fmt: skip
    after = _batch_stats(server, "batch4")
    assert after == {**before, 4: before.get(4, 0) + 1}
