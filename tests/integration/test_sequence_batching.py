"""Triton's ``sequence_batching`` against a real server with the real ``tritonclient``.

Stateful accumulators (the ``sequence_accumulator`` Python model under ``tests/models``
and an ONNX model built here) keep their running sum in implicit state; the Python one
also echoes the control inputs, the size of each execution, how many null requests it
held, its position in the batch and the instance that ran it.  Every model gets its own
copy so that the slots one test occupies never affect another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from openeas.testing.server import ServerProcess
from tests.integration.conftest import copy_test_model, pending_requests, wait_until

pytestmark = pytest.mark.python_backend

_STRING_CORRID = {
    "data_type: TYPE_UINT64 } ] }": "data_type: TYPE_STRING } ] }",
    '{ name: "CORRID_OUT" data_type: TYPE_UINT64': '{ name: "CORRID_OUT" data_type: TYPE_STRING',
}
_IDLE = "max_sequence_idle_microseconds: 5000000"

#: Copies of sequence_accumulator: name -> replacements in its config.
PY_MODELS: dict[str, dict[str, str]] = {
    "acc_py": {},
    "acc_py_grpc": {},
    "acc_py_stream": {},
    "acc_py_str": _STRING_CORRID,
    "acc_py_nulls": {},
    "acc_py_errors": {},
    "acc_py_nobatch": {"max_batch_size: 4": "max_batch_size: 0"},
    "acc_py_direct": {
        _IDLE: _IDLE + " direct { max_queue_delay_microseconds: 10000000 "
        "minimum_slot_utilization: 1.0 }"
    },
    "acc_py_oldest": {
        _IDLE: _IDLE + " oldest { max_candidate_sequences: 4 preferred_batch_size: [ 4 ] "
        "max_queue_delay_microseconds: 10000000 }"
    },
    "acc_py_idle": {_IDLE: "max_sequence_idle_microseconds: 300000"},
    "acc_py_two": {"count: 1": "count: 2", "max_batch_size: 4": "max_batch_size: 1"},
    "acc_py_backlog": {"max_batch_size: 4": "max_batch_size: 1"},
}

ONNX_CONFIG = """
name: "acc_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [
  { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] },
  { name: "CORRID_OUT" data_type: TYPE_UINT64 dims: [ 1 ] }
]
sequence_batching {
  control_input [
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]
  state [
    {
      input_name: "ACC_IN"
      output_name: "ACC_OUT"
      data_type: TYPE_FP32
      dims: [ 1 ]
      initial_state { data_type: TYPE_FP32 dims: [ 1 ] data_file: "start.bin" name: "s" }
    }
  ]
}
"""
#: The ONNX accumulator starts every sequence from this (initial_state data_file).
ONNX_INITIAL = 100.0


def write_onnx_accumulator(model_dir: Path) -> None:
    """OUTPUT = ACC_OUT = ACC_IN + INPUT; CORRID_OUT = CORRID (batch dim first)."""
    import onnx
    from onnx import TensorProto, helper

    from openeas.testing.onnx_models import IR_VERSION, OPSET

    def info(name: str, elem: int) -> Any:
        return helper.make_tensor_value_info(name, elem, ["batch", 1])

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["ACC_IN", "INPUT"], ["OUTPUT"]),
            helper.make_node("Identity", ["OUTPUT"], ["ACC_OUT"]),
            helper.make_node("Identity", ["CORRID"], ["CORRID_OUT"]),
        ],
        "accumulator",
        [
            info("INPUT", TensorProto.FLOAT),
            info("ACC_IN", TensorProto.FLOAT),
            info("CORRID", TensorProto.UINT64),
        ],
        [
            info("OUTPUT", TensorProto.FLOAT),
            info("ACC_OUT", TensorProto.FLOAT),
            info("CORRID_OUT", TensorProto.UINT64),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    (model_dir / "1").mkdir(parents=True)
    onnx.save(model, str(model_dir / "1" / "model.onnx"))
    (model_dir / "config.pbtxt").write_text(ONNX_CONFIG)
    (model_dir / "initial_state").mkdir()
    (model_dir / "initial_state" / "start.bin").write_bytes(
        np.array([ONNX_INITIAL], dtype=np.float32).tobytes()
    )


@pytest.fixture(scope="module")
def server(
    launch: Callable[..., ServerProcess], tmp_path_factory: pytest.TempPathFactory
) -> ServerProcess:
    root = tmp_path_factory.mktemp("sequence-repo")
    for name, replace in PY_MODELS.items():
        copy_test_model(root, "sequence_accumulator", name, replace=replace)
    write_onnx_accumulator(root / "acc_onnx")
    return launch(root)


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.http_url, concurrency=8)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def _module(client: Any) -> Any:
    return grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient


def step(
    client: Any,
    model: str,
    sequence_id: int | str,
    value: float,
    *,
    start: bool = False,
    end: bool = False,
    datatype: str = "INT32",
) -> dict[str, Any]:
    """One request of a sequence; its outputs as plain Python values (first element)."""
    module = _module(client)
    tensor = module.InferInput("INPUT", [1, 1], datatype)
    dtype = np.int32 if datatype == "INT32" else np.float32
    tensor.set_data_from_numpy(np.array([[value]], dtype=dtype))
    result = client.infer(
        model, [tensor], sequence_id=sequence_id, sequence_start=start, sequence_end=end
    )
    response = result.get_response()
    names = [o["name"] if isinstance(o, dict) else o.name for o in _outputs(response)]
    values: dict[str, Any] = {}
    for name in names:
        item = result.as_numpy(name).reshape(-1)[0]
        values[name] = item.decode() if isinstance(item, bytes) else item.item()
    return values


def _outputs(response: Any) -> list[Any]:
    return response["outputs"] if isinstance(response, dict) else list(response.outputs)


def stats(client: httpclient.InferenceServerClient, model: str) -> dict[str, Any]:
    return client.get_inference_statistics(model)["model_stats"][0]


# -- sequences, controls and state ----------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_interleaved_int_sequences_keep_their_own_state(
    protocol: str, http: Any, grpc: Any
) -> None:
    client = http if protocol == "http" else grpc
    model = "acc_py" if protocol == "http" else "acc_py_grpc"
    a, b = 1001, 2**40 + 7  # the second needs more than 32 bits
    assert step(client, model, a, 1, start=True)["OUTPUT"] == 1
    assert step(client, model, b, 100, start=True)["OUTPUT"] == 100
    assert step(client, model, a, 2)["OUTPUT"] == 3
    assert step(client, model, b, 200)["OUTPUT"] == 300
    last_a = step(client, model, a, 3, end=True)
    assert last_a["OUTPUT"] == 6
    assert last_a["CORRID_OUT"] == a
    last_b = step(client, model, b, 300, end=True)
    assert last_b["OUTPUT"] == 600
    assert last_b["CORRID_OUT"] == b
    # the implicit state never reaches the client
    assert "ACC_OUT" not in last_a
    # a sequence started again with the same id starts from the initial state
    assert step(client, model, a, 5, start=True, end=True)["OUTPUT"] == 5


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_string_sequence_ids(protocol: str, http: Any, grpc: Any) -> None:
    client = http if protocol == "http" else grpc
    first, second = f"user-{protocol}-a", f"user-{protocol}-b"
    assert step(client, "acc_py_str", first, 4, start=True)["CORRID_OUT"] == first
    assert step(client, "acc_py_str", second, 40, start=True)["OUTPUT"] == 40
    out = step(client, "acc_py_str", first, 4, end=True)
    assert (out["OUTPUT"], out["CORRID_OUT"]) == (8, first)
    out = step(client, "acc_py_str", second, 40, end=True)
    assert (out["OUTPUT"], out["CORRID_OUT"]) == (80, second)


def test_sequences_over_one_grpc_stream(server: ServerProcess) -> None:
    """tritonclient's usual way to drive sequences: async_stream_infer on one stream."""
    results: list[tuple[int, int]] = []
    errors: list[Any] = []
    done = threading.Event()
    steps = [
        (31, 1, True, False),
        (32, 10, True, False),
        (31, 2, False, False),
        (32, 20, False, False),
        (31, 3, False, True),
        (32, 30, False, True),
    ]

    def callback(result: Any, error: Any) -> None:
        if error is not None:
            errors.append(error)
        else:
            results.append(
                (int(result.as_numpy("CORRID_OUT").item()), int(result.as_numpy("OUTPUT").item()))
            )
        if len(results) + len(errors) == len(steps):
            done.set()

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.start_stream(callback=callback)
        for sid, value, start, end in steps:
            tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
            tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
            client.async_stream_infer(
                "acc_py_stream",
                [tensor],
                sequence_id=sid,
                sequence_start=start,
                sequence_end=end,
            )
        assert done.wait(60), (results, errors)
    finally:
        client.stop_stream()
        client.close()
    assert not errors, errors
    assert [out for sid, out in results if sid == 31] == [1, 3, 6]
    assert [out for sid, out in results if sid == 32] == [10, 30, 60]


def test_control_inputs_follow_the_sequence(http: Any) -> None:
    model, sid = "acc_py", 77
    first = step(http, model, sid, 1, start=True)
    middle = step(http, model, sid, 1)
    last = step(http, model, sid, 1, end=True)
    # START: int32 [0, 1]; END: fp32 [0, 1]; READY: bool [false, true]
    assert (first["START_OUT"], first["END_OUT"], first["READY_OUT"]) == (1, 0.0, True)
    assert (middle["START_OUT"], middle["END_OUT"], middle["READY_OUT"]) == (0, 0.0, True)
    assert (last["START_OUT"], last["END_OUT"], last["READY_OUT"]) == (0, 1.0, True)
    assert {first["CORRID_OUT"], middle["CORRID_OUT"], last["CORRID_OUT"]} == {sid}
    single = step(http, model, 78, 1, start=True, end=True)
    assert (single["START_OUT"], single["END_OUT"]) == (1, 1.0)


def test_direct_fills_empty_slots_with_null_requests(http: Any) -> None:
    model = "acc_py_nulls"
    before = stats(http, model)
    step(http, model, 1, 1, start=True)  # slot 0
    step(http, model, 2, 1, start=True)  # slot 1 (slot 0 has no request: a null one)
    out = step(http, model, 2, 1)
    assert (out["BATCH_SIZE"], out["NULL_COUNT"], out["POSITION"]) == (2, 1, 1)
    out = step(http, model, 1, 1, end=True)  # slot 0: slot 1 is occupied but not ready
    assert (out["BATCH_SIZE"], out["NULL_COUNT"], out["POSITION"]) == (2, 1, 0)
    # sequence 2 keeps slot 1 (slot 0 is free now): still at batch position 1
    out = step(http, model, 2, 1, end=True)
    assert (out["BATCH_SIZE"], out["NULL_COUNT"], out["POSITION"]) == (2, 1, 1)
    assert out["OUTPUT"] == 3
    after = stats(http, model)
    # null requests are not inferences; every execution held one client request here
    assert after["inference_count"] - before["inference_count"] == 5
    assert after["execution_count"] - before["execution_count"] == 5
    assert after["inference_stats"]["success"]["count"] == 5


def test_model_without_batching(http: Any, grpc: Any) -> None:
    model = "acc_py_nobatch"
    module = httpclient
    tensor = module.InferInput("INPUT", [1], "INT32")
    tensor.set_data_from_numpy(np.array([7], dtype=np.int32))
    result = http.infer(model, [tensor], sequence_id=5, sequence_start=True)
    assert result.as_numpy("OUTPUT").tolist() == [7]
    assert result.as_numpy("START_OUT").tolist() == [1]
    tensor = grpcclient.InferInput("INPUT", [1], "INT32")
    tensor.set_data_from_numpy(np.array([8], dtype=np.int32))
    result = grpc.infer(model, [tensor], sequence_id=5, sequence_end=True)
    assert result.as_numpy("OUTPUT").tolist() == [15]
    assert result.as_numpy("END_OUT").tolist() == [1.0]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_onnx_accumulator_with_initial_state_file(protocol: str, http: Any, grpc: Any) -> None:
    client = http if protocol == "http" else grpc
    base = 10 if protocol == "http" else 20
    a, b = base + 1, base + 2
    run = {a: ONNX_INITIAL, b: ONNX_INITIAL}
    for index, value in enumerate([1.5, 2.0, 4.0]):
        for sid, scale in ((a, 1.0), (b, 10.0)):
            run[sid] += value * scale
            out = step(
                client,
                "acc_onnx",
                sid,
                value * scale,
                start=index == 0,
                end=index == 2,
                datatype="FP32",
            )
            assert out["OUTPUT"] == pytest.approx(run[sid])
            assert out["CORRID_OUT"] == sid
    assert set(step(client, "acc_onnx", a, 1, start=True, end=True, datatype="FP32")) == {
        "OUTPUT",
        "CORRID_OUT",
    }


# -- batching strategies --------------------------------------------------------------


@pytest.mark.parametrize("model", ["acc_py_direct", "acc_py_oldest"])
def test_strategies_batch_several_sequences(model: str, server: ServerProcess, http: Any) -> None:
    before = stats(http, model)
    # one client per thread: tritonclient's HTTP client is not shared between threads
    clients = [httpclient.InferenceServerClient(server.http_url) for _ in range(4)]
    try:
        results = _run_concurrent_sequences_per_client(clients, model, steps=4)
    finally:
        for c in clients:
            c.close()
    after = stats(http, model)
    for index, outputs in enumerate(results):
        assert [o["OUTPUT"] for o in outputs] == [(index + 1) * n for n in range(1, 5)]
        assert all(o["NULL_COUNT"] == 0 for o in outputs)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 16
    assert executions < inferences
    assert max(o["BATCH_SIZE"] for outputs in results for o in outputs) == 4


def _run_concurrent_sequences_per_client(
    clients: list[Any], model: str, steps: int
) -> list[list[dict[str, Any]]]:
    results: list[list[dict[str, Any]]] = [[] for _ in clients]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(clients))
    # Every sequence has started (holds its slot) before any goes on: they all run at
    # once, however the threads happen to be scheduled on a loaded machine.
    started = threading.Barrier(len(clients))

    def run(index: int) -> None:
        try:
            barrier.wait(30)
            for n in range(steps):
                results[index].append(
                    step(
                        clients[index],
                        model,
                        500 + index,
                        index + 1,
                        start=n == 0,
                        end=n == steps - 1,
                    )
                )
                if n == 0:
                    started.wait(60)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return results


def test_sequences_stick_to_one_instance(server: ServerProcess) -> None:
    clients = [httpclient.InferenceServerClient(server.http_url) for _ in range(2)]
    try:
        results = _run_concurrent_sequences_per_client(clients, "acc_py_two", steps=6)
    finally:
        for c in clients:
            c.close()
    instances = [{o["INSTANCE"] for o in outputs} for outputs in results]
    # each sequence ran on one instance only; the two sequences used both instances
    assert all(len(names) == 1 for names in instances), instances
    assert instances[0] != instances[1]
    for index, outputs in enumerate(results):
        assert outputs[-1]["OUTPUT"] == (index + 1) * 6


def test_backlogged_sequence_waits_for_a_free_slot(server: ServerProcess) -> None:
    """One slot: a second sequence starts only once the first has ended."""
    first = httpclient.InferenceServerClient(server.http_url)
    second = httpclient.InferenceServerClient(server.http_url, concurrency=1)
    model = "acc_py_backlog"
    try:
        step(first, model, 1, 1, start=True)
        tensor = httpclient.InferInput("INPUT", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.array([[50]], dtype=np.int32))
        waiting = second.async_infer(
            model, [tensor], sequence_id=2, sequence_start=True, sequence_end=True
        )
        wait_until(lambda: pending_requests(server, model) == 1, what="the backlogged request")
        # sequence 1 keeps the only slot: its steps run, sequence 2 still waits
        assert step(first, model, 1, 1)["OUTPUT"] == 2
        assert stats(first, model)["inference_count"] == 2
        assert pending_requests(server, model) == 1
        assert step(first, model, 1, 1, end=True)["OUTPUT"] == 3
        assert waiting.get_result(timeout=30).as_numpy("OUTPUT").tolist() == [[50]]
    finally:
        first.close()
        second.close()


# -- idle sequences and errors --------------------------------------------------------


def test_idle_sequence_is_released(http: Any, grpc: Any) -> None:
    model = "acc_py_idle"
    assert step(http, model, 9, 1, start=True)["OUTPUT"] == 1

    def released() -> str:
        try:
            step(http, model, 9, 1)
        except InferenceServerException as exc:
            return str(exc)
        return ""

    # each successful step keeps it alive; polling stops at the first error
    message = wait_until(released, timeout=30, interval=0.5, what="the idle release")
    assert "must specify the START flag on the first request of the sequence" in message
    assert "sequence 9" in message
    with pytest.raises(InferenceServerException) as info:
        step(grpc, model, 9, 1, end=True)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    # its state was dropped: a new start begins from zero
    assert step(http, model, 9, 4, start=True, end=True)["OUTPUT"] == 4


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_request_without_sequence_id(protocol: str, http: Any, grpc: Any) -> None:
    client = http if protocol == "http" else grpc
    module = _module(client)
    tensor = module.InferInput("INPUT", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[1]], dtype=np.int32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("acc_py_errors", [tensor])
    assert (
        "inference request to model 'acc_py_errors' must specify a non-zero or non-empty "
        "correlation ID" in str(info.value)
    )
    assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unknown_sequence_without_start(protocol: str, http: Any, grpc: Any) -> None:
    client = http if protocol == "http" else grpc
    with pytest.raises(InferenceServerException) as info:
        step(client, "acc_py_errors", 4242, 1)
    assert (
        "inference request for sequence 4242 to model 'acc_py_errors' must specify the "
        "START flag on the first request of the sequence" in str(info.value)
    )
    assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")
    with pytest.raises(InferenceServerException, match="sequence abc .*START flag"):
        step(client, "acc_py_str", "abc", 1, end=True)


def test_bad_sequence_requests(http: Any, grpc: Any) -> None:
    # a string id for a model whose CORRID is TYPE_UINT64
    with pytest.raises(InferenceServerException, match="must be an integer"):
        step(grpc, "acc_py_errors", "text", 1, start=True)
    # sequence requests hold one item
    tensor = httpclient.InferInput("INPUT", [2, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[1], [2]], dtype=np.int32))
    with pytest.raises(InferenceServerException, match="must specify batch-size 1"):
        http.infer("acc_py_errors", [tensor], sequence_id=3, sequence_start=True)
    # the server is still fine and the failed start left no sequence behind
    with pytest.raises(InferenceServerException, match="START flag"):
        step(http, "acc_py_errors", 3, 1)
    assert step(http, "acc_py_errors", 3, 2, start=True, end=True)["OUTPUT"] == 2
