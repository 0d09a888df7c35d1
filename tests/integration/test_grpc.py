"""The gRPC front end against a real server process, through Triton's own clients."""

from __future__ import annotations

import asyncio
import queue
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from openeas.protocol import datatypes, grpc_codec
from openeas.protocol.errors import InvalidArgument, NotFound
from openeas.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor
from openeas.server.frontends.grpc import GrpcFrontend
from openeas.server.options import ServerOptions
from openeas.testing.onnx_models import (
    ADD_SUB_CONFIG,
    write_add_sub_model,
    write_identity_model,
    write_model_config,
)
from openeas.testing.server import ServerProcess, start_server


def _identity_config(name: str, datatype: str, dims: str) -> str:
    return f"""
name: "{name}"
backend: "onnxruntime"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: {datatype} dims: [ {dims} ] }} ]
output [ {{ name: "OUTPUT0" data_type: {datatype} dims: [ {dims} ] }} ]
"""


def _write_repository(root: Path) -> Path:
    write_add_sub_model(root / "simple" / "1")
    write_model_config(root / "simple", ADD_SUB_CONFIG)
    for name, datatype, config_type, dims in (
        ("identity_bytes", "BYTES", "TYPE_STRING", (-1, -1)),
        ("identity_int8", "INT8", "TYPE_INT8", (-1,)),
        ("identity_fp32", "FP32", "TYPE_FP32", (-1,)),
    ):
        write_identity_model(root / name / "1", datatype, dims)
        write_model_config(
            root / name, _identity_config(name, config_type, ", ".join(map(str, dims)))
        )
    return root


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_repository(tmp_path_factory.mktemp("grpc_repo"))


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("grpc_logs") / "server.log"
    process = start_server(repository, log_path=log)
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def explicit_server(
    repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("grpc_logs") / "explicit.log"
    process = start_server(repository, "--model-control-mode=explicit", log_path=log)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def small_message_server(
    repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("grpc_logs") / "small.log"
    process = start_server(repository, "--grpc-max-message-size=1000", log_path=log)
    yield process
    process.stop()


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


@pytest.fixture()
def stub(server: ServerProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _add_sub_inputs(
    a: np.ndarray, b: np.ndarray, datatype: str = "FP32"
) -> list[grpcclient.InferInput]:
    in0 = grpcclient.InferInput("INPUT0", list(a.shape), datatype)
    in0.set_data_from_numpy(a)
    in1 = grpcclient.InferInput("INPUT1", list(b.shape), datatype)
    in1.set_data_from_numpy(b)
    return [in0, in1]


def _operands(batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
    a = np.arange(batch * 16, dtype=np.float32).reshape(batch, 16)
    b = np.full((batch, 16), 3.5, dtype=np.float32)
    return a, b


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return exc.value.status() or ""


# -- health and metadata ---------------------------------------------------------------


def test_live_and_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    assert not client.is_model_ready("simple", "7")
    assert not client.is_model_ready("no_such_model")


def test_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "triton"
    assert meta["version"]
    assert "model_repository" in meta["extensions"]


def test_model_metadata(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("simple", as_json=True)
    assert meta["name"] == "simple"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("INPUT0", "FP32", ["-1", "16"]),
        ("INPUT1", "FP32", ["-1", "16"]),
    ]
    assert [t["name"] for t in meta["outputs"]] == ["OUTPUT0", "OUTPUT1"]


def test_model_config(client: grpcclient.InferenceServerClient) -> None:
    config = client.get_model_config("simple", as_json=True)["config"]
    assert config["name"] == "simple"
    assert config["max_batch_size"] == 8
    assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    proto = client.get_model_config("simple").config
    assert proto.output[1].name == "OUTPUT1"


def test_unknown_model_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_metadata("no_such_model")
    assert _status(exc) == "StatusCode.NOT_FOUND"
    assert "no_such_model" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        client.get_model_config("no_such_model")
    assert _status(exc) == "StatusCode.NOT_FOUND"


# -- inference -------------------------------------------------------------------------


def test_infer_fp32_add_sub(client: grpcclient.InferenceServerClient) -> None:
    a, b = _operands(batch=2)
    result = client.infer("simple", _add_sub_inputs(a, b), request_id="req-1")
    response = result.get_response()
    assert response.id == "req-1"
    assert response.model_name == "simple"
    assert response.model_version == "1"
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0").dtype == np.float32
    assert result.as_numpy("OUTPUT0").shape == (2, 16)


def test_infer_requested_outputs_subset(client: grpcclient.InferenceServerClient) -> None:
    a, b = _operands()
    outputs = [grpcclient.InferRequestedOutput("OUTPUT1")]
    result = client.infer("simple", _add_sub_inputs(a, b), outputs=outputs)
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b)


def test_infer_with_parameters(client: grpcclient.InferenceServerClient) -> None:
    a, b = _operands()
    result = client.infer(
        "simple",
        _add_sub_inputs(a, b),
        parameters={"custom_str": "x", "custom_int": 7, "custom_bool": True},
    )
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b)


def test_infer_bytes_identity(client: grpcclient.InferenceServerClient) -> None:
    data = np.array([[b"hello", b"", "w\u00f6rld".encode()]], dtype=np.object_)
    tensor = grpcclient.InferInput("INPUT0", [1, 3], "BYTES")
    tensor.set_data_from_numpy(data)
    result = client.infer("identity_bytes", [tensor])
    out = result.as_numpy("OUTPUT0")
    assert out.shape == (1, 3)
    assert out.tolist() == data.tolist()


def test_typed_contents(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name="identity_int8", id="typed")
    tensor = request.inputs.add(name="INPUT0", datatype="INT8", shape=[4])
    tensor.contents.int_contents.extend([-128, -1, 0, 127])
    response = stub.ModelInfer(request)
    assert response.id == "typed"
    assert response.outputs[0].datatype == "INT8"
    assert list(response.outputs[0].shape) == [4]
    out = np.frombuffer(response.raw_output_contents[0], dtype=np.int8)
    assert out.tolist() == [-128, -1, 0, 127]

    request = service_pb2.ModelInferRequest(model_name="identity_bytes")
    tensor = request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 2])
    tensor.contents.bytes_contents.extend([b"ab", b"cde"])
    response = stub.ModelInfer(request)
    assert response.raw_output_contents[0] == b"\x02\x00\x00\x00ab\x03\x00\x00\x00cde"

    request = service_pb2.ModelInferRequest(model_name="identity_fp32")
    tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[3])
    tensor.contents.fp32_contents.extend([1.5, -2.0, 3.25])
    response = stub.ModelInfer(request)
    out = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    assert out.tolist() == [1.5, -2.0, 3.25]


def test_typed_contents_errors(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    def invalid(request: service_pb2.ModelInferRequest) -> str:
        with pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(request)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
        return exc.value.details()

    request = service_pb2.ModelInferRequest(model_name="identity_int8")
    request.inputs.add(name="INPUT0", datatype="INT8", shape=[2]).contents.int_contents.extend(
        [1, 300]
    )
    assert "out of range" in invalid(request)

    request = service_pb2.ModelInferRequest(model_name="identity_int8")
    request.inputs.add(name="INPUT0", datatype="INT8", shape=[3]).contents.int_contents.extend(
        [1, 2]
    )
    assert "number of elements" in invalid(request)

    request = service_pb2.ModelInferRequest(model_name="identity_fp32")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1]).contents.int64_contents.extend(
        [1]
    )
    assert "fp32_contents" in invalid(request)

    request = service_pb2.ModelInferRequest(model_name="identity_fp32")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1]).contents.fp32_contents.append(1)
    request.raw_input_contents.append(np.float32(1).tobytes())
    assert "raw_input_contents" in invalid(request)


def test_raw_contents_errors(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    def invalid(request: service_pb2.ModelInferRequest) -> str:
        with pytest.raises(grpc.RpcError) as exc:
            stub.ModelInfer(request)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
        return exc.value.details()

    a, b = _operands()
    # raw_input_contents one byte too short for INPUT1
    request = service_pb2.ModelInferRequest(model_name="simple")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    request.inputs.add(name="INPUT1", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.extend([a.tobytes(), b.tobytes()[:-1]])
    details = invalid(request)
    assert "INPUT1" in details and "63" in details and "64" in details

    # fewer raw buffers than inputs
    del request.raw_input_contents[1]
    assert "raw input contents" in invalid(request)

    # more raw buffers than inputs
    request.raw_input_contents.extend([b.tobytes(), b.tobytes()])
    assert "raw input contents" in invalid(request)

    # an unknown datatype
    request = service_pb2.ModelInferRequest(model_name="identity_fp32")
    request.inputs.add(name="INPUT0", datatype="FP8", shape=[1])
    request.raw_input_contents.append(b"\x00")
    assert "FP8" in invalid(request)

    # BYTES whose length prefix runs past the end
    request = service_pb2.ModelInferRequest(model_name="identity_bytes")
    request.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(b"\x09\x00\x00\x00abc")
    assert "truncated" in invalid(request)


def test_infer_unknown_model(client: grpcclient.InferenceServerClient) -> None:
    a, b = _operands()
    with pytest.raises(InferenceServerException) as exc:
        client.infer("no_such_model", _add_sub_inputs(a, b))
    assert _status(exc) == "StatusCode.NOT_FOUND"
    assert "no_such_model" in exc.value.message()


def test_infer_wrong_shape(client: grpcclient.InferenceServerClient) -> None:
    a = np.zeros((1, 8), dtype=np.float32)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("simple", _add_sub_inputs(a, a))
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"
    assert "shape" in exc.value.message()


def test_infer_wrong_datatype(client: grpcclient.InferenceServerClient) -> None:
    a = np.zeros((1, 16), dtype=np.int32)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("simple", _add_sub_inputs(a, a, "INT32"))
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"
    assert "INT32" in exc.value.message()


def test_shared_memory_is_disabled_by_default(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc:
        client.get_system_shared_memory_status()
    assert _status(exc) == "StatusCode.UNAVAILABLE"
    assert "--allow-client-shm=true" in exc.value.message()
    with pytest.raises(InferenceServerException) as exc:
        client.register_cuda_shared_memory("region", b"", 0, 16)
    assert _status(exc) == "StatusCode.UNAVAILABLE"


def test_statistics_after_infers(client: grpcclient.InferenceServerClient) -> None:
    def success_count() -> int:
        stats = client.get_inference_statistics("simple", as_json=True)
        (entry,) = stats["model_stats"]
        return int(entry["inference_stats"]["success"].get("count", 0))

    before = success_count()
    a, b = _operands()
    for _ in range(3):
        client.infer("simple", _add_sub_inputs(a, b))
    assert success_count() == before + 3

    stats = client.get_inference_statistics("simple", "1", as_json=True)
    (entry,) = stats["model_stats"]
    assert entry["name"] == "simple"
    assert entry["version"] == "1"
    assert int(entry["inference_count"]) >= 3
    assert int(entry["last_inference"]) > 0
    assert entry["batch_stats"]
    assert int(entry["inference_stats"]["compute_infer"]["count"]) >= 3

    everything = client.get_inference_statistics(as_json=True)
    names = {s["name"] for s in everything["model_stats"]}
    assert {"simple", "identity_bytes"} <= names

    with pytest.raises(InferenceServerException) as exc:
        client.get_inference_statistics("no_such_model")
    assert _status(exc) == "StatusCode.NOT_FOUND"


# -- settings --------------------------------------------------------------------------


def test_log_settings(client: grpcclient.InferenceServerClient) -> None:
    settings = client.get_log_settings(as_json=True)["settings"]
    assert settings["log_info"]["bool_param"] is True
    assert settings["log_format"]["string_param"] == "default"
    updated = client.update_log_settings({"log_verbose_level": 1}, as_json=True)["settings"]
    assert updated["log_verbose_level"]["uint32_param"] == 1
    updated = client.update_log_settings({"log_verbose_level": 0}, as_json=True)["settings"]
    assert updated["log_verbose_level"].get("uint32_param", 0) == 0
    with pytest.raises(InferenceServerException) as exc:
        client.update_log_settings({"no_such_setting": True})
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"


def test_trace_settings(client: grpcclient.InferenceServerClient) -> None:
    settings = client.get_trace_settings(as_json=True)["settings"]
    assert settings["trace_level"]["value"] == ["OFF"]
    updated = client.update_trace_settings(
        "simple", {"trace_rate": "5", "trace_level": ["TIMESTAMPS"]}, as_json=True
    )["settings"]
    assert updated["trace_rate"]["value"] == ["5"]
    assert updated["trace_level"]["value"] == ["TIMESTAMPS"]
    assert client.get_trace_settings(as_json=True)["settings"]["trace_rate"]["value"] == ["1000"]
    cleared = client.update_trace_settings("simple", {"trace_rate": None}, as_json=True)
    assert cleared["settings"]["trace_rate"]["value"] == ["1000"]
    with pytest.raises(InferenceServerException) as exc:
        client.update_trace_settings(settings={"trace_level": ["LOUD"]})
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as exc:
        client.get_trace_settings("no_such_model")
    assert _status(exc) == "StatusCode.NOT_FOUND"


# -- repository ------------------------------------------------------------------------


def test_load_needs_explicit_mode(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as exc:
        client.load_model("simple")
    # Triton answers UNAVAILABLE with this message when the control mode is not explicit
    assert _status(exc) in ("StatusCode.UNAVAILABLE", "StatusCode.UNIMPLEMENTED")
    assert "not allowed" in exc.value.message()


def test_repository_index_load_unload(explicit_server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(explicit_server.grpc_url) as c:
        index = c.get_model_repository_index(as_json=True)["models"]
        assert {m["name"] for m in index} == {
            "simple",
            "identity_bytes",
            "identity_int8",
            "identity_fp32",
        }
        assert not any(m.get("state") == "READY" for m in index)
        assert not c.is_model_ready("simple")

        c.load_model("simple")
        assert c.is_model_ready("simple")
        ready = c.get_model_repository_index(as_json=True)
        ready_names = [m["name"] for m in ready["models"] if m.get("state") == "READY"]
        assert ready_names == ["simple"]
        a, b = _operands()
        result = c.infer("simple", _add_sub_inputs(a, b))
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b)

        c.unload_model("simple")
        assert not c.is_model_ready("simple")
        states = {
            m["name"]: m.get("state") for m in c.get_model_repository_index(as_json=True)["models"]
        }
        assert states["simple"] == "UNAVAILABLE"

        with pytest.raises(InferenceServerException) as exc:
            c.load_model("no_such_model")
        assert _status(exc) != "StatusCode.OK"
        assert "no_such_model" in exc.value.message()


def test_load_with_config_and_files(explicit_server: ServerProcess, tmp_path: Path) -> None:
    model_file = write_identity_model(tmp_path / "build", "FP32", (-1,))
    config = (
        '{"name": "uploaded", "backend": "onnxruntime", "max_batch_size": 0,'
        ' "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],'
        ' "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}]}'
    )
    with grpcclient.InferenceServerClient(explicit_server.grpc_url) as c:
        c.load_model(
            "uploaded", config=config, files={"file:1/model.onnx": model_file.read_bytes()}
        )
        assert c.is_model_ready("uploaded")
        data = np.array([1.0, 2.0], dtype=np.float32)
        tensor = grpcclient.InferInput("INPUT0", [2], "FP32")
        tensor.set_data_from_numpy(data)
        np.testing.assert_array_equal(c.infer("uploaded", [tensor]).as_numpy("OUTPUT0"), data)
        c.unload_model("uploaded")
        assert not c.is_model_ready("uploaded")


# -- limits and start-up ---------------------------------------------------------------


def test_oversized_message(small_message_server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(small_message_server.grpc_url) as c:
        small = np.ones(16, dtype=np.float32)
        tensor = grpcclient.InferInput("INPUT0", [16], "FP32")
        tensor.set_data_from_numpy(small)
        np.testing.assert_array_equal(c.infer("identity_fp32", [tensor]).as_numpy("OUTPUT0"), small)

        big = np.ones(1000, dtype=np.float32)
        tensor = grpcclient.InferInput("INPUT0", [1000], "FP32")
        tensor.set_data_from_numpy(big)
        with pytest.raises(InferenceServerException) as exc:
            c.infer("identity_fp32", [tensor])
        assert _status(exc) == "StatusCode.RESOURCE_EXHAUSTED"
        assert c.is_server_live()


def test_port_in_use_is_a_startup_error(repository: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError) as exc:
            start_server(
                repository, f"--grpc-port={port}", log_path=tmp_path / "taken.log", timeout=30
            )
    assert f"127.0.0.1:{port}" in str(exc.value)


# -- asyncio client and streaming ------------------------------------------------------


def test_aio_client_infer(server: ServerProcess) -> None:
    async def run() -> None:
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            assert await c.is_server_ready()
            a, b = _operands()
            inputs = []
            for name, value in (("INPUT0", a), ("INPUT1", b)):
                tensor = aioclient.InferInput(name, [1, 16], "FP32")
                tensor.set_data_from_numpy(value)
                inputs.append(tensor)
            results = await asyncio.gather(
                *(c.infer("simple", inputs, request_id=str(i)) for i in range(8))
            )
            for i, result in enumerate(results):
                assert result.get_response().id == str(i)
                np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b)
                np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b)
            with pytest.raises(InferenceServerException) as exc:
                await c.infer("no_such_model", inputs)
            assert _status(exc) == "StatusCode.NOT_FOUND"

    asyncio.run(run())


def test_stream_infer(client: grpcclient.InferenceServerClient) -> None:
    results: queue.Queue[tuple[grpcclient.InferResult | None, InferenceServerException | None]]
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        expected: dict[str, np.ndarray] = {}
        for i in range(6):
            a = np.full((1, 16), float(i), dtype=np.float32)
            b = np.ones((1, 16), dtype=np.float32)
            if i == 2:  # a bad request in the middle of the stream
                bad = np.zeros((1, 4), dtype=np.float32)
                client.async_stream_infer("simple", _add_sub_inputs(bad, bad), request_id="bad")
                continue
            client.async_stream_infer("simple", _add_sub_inputs(a, b), request_id=f"r{i}")
            expected[f"r{i}"] = a + b
        seen: dict[str, np.ndarray] = {}
        errors: list[InferenceServerException] = []
        for _ in range(6):
            result, error = results.get(timeout=30)
            if error is not None:
                errors.append(error)
                continue
            assert result is not None
            seen[result.get_response().id] = result.as_numpy("OUTPUT0")
        assert len(errors) == 1
        assert "shape" in errors[0].message()
        assert seen.keys() == expected.keys()
        for request_id, value in expected.items():
            np.testing.assert_allclose(seen[request_id], value)
        # the stream stays usable after the error
        a, b = _operands()
        client.async_stream_infer("simple", _add_sub_inputs(a, b), request_id="after")
        result, error = results.get(timeout=30)
        assert error is None and result is not None
        assert result.get_response().id == "after"
    finally:
        client.stop_stream()


def test_raw_stream_error_carries_request_id(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    a, b = _operands()
    good = service_pb2.ModelInferRequest(model_name="simple", id="good")
    good.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    good.inputs.add(name="INPUT1", datatype="FP32", shape=[1, 16])
    good.raw_input_contents.extend([a.tobytes(), b.tobytes()])
    bad = service_pb2.ModelInferRequest(model_name="no_such_model", id="bad")
    responses = list(stub.ModelStreamInfer(iter([bad, good])))
    by_id = {r.infer_response.id: r for r in responses}
    assert set(by_id) == {"good", "bad"}
    assert "no_such_model" in by_id["bad"].error_message
    assert by_id["good"].error_message == ""
    out = np.frombuffer(by_id["good"].infer_response.raw_output_contents[0], dtype=np.float32)
    np.testing.assert_allclose(out, (a + b).reshape(-1))


# -- in-process: the codec, the error mapping and binding ------------------------------


@pytest.mark.parametrize(
    ("datatype", "array"),
    [
        ("FP32", np.arange(6, dtype=np.float32).reshape(2, 3)),
        ("FP16", np.arange(4, dtype=np.float16)),
        ("BF16", np.arange(4, dtype=np.float32).astype(datatypes.BF16)),
        ("INT64", np.array([[-(2**62), 2**62]], dtype=np.int64)),
        ("UINT8", np.array([0, 255], dtype=np.uint8)),
        ("BOOL", np.array([True, False, True])),
        ("BYTES", np.array([b"a", b"", b"\x00\xff"], dtype=np.object_)),
    ],
)
def test_codec_round_trip(datatype: str, array: np.ndarray) -> None:
    request = InferRequest(
        "m",
        "2",
        "id-1",
        inputs=[Tensor("X", datatype, list(array.shape), array, {"p": 1})],
        outputs=[RequestedOutput("Y", classification=3)],
        parameters={"flag": True, "n": -5, "big": 2**64 - 1, "ratio": 0.5, "s": "x"},
    )
    wire = service_pb2.ModelInferRequest.FromString(
        grpc_codec.encode_request(request).SerializeToString()
    )
    decoded = grpc_codec.decode_request(wire)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "2", "id-1")
    assert decoded.parameters == request.parameters
    (tensor,) = decoded.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("X", datatype, list(array.shape))
    assert tensor.data.dtype == array.dtype
    assert tensor.data.tolist() == array.tolist()
    assert tensor.parameters == {"p": 1}
    assert decoded.outputs is not None
    assert [(o.name, o.classification) for o in decoded.outputs] == [("Y", 3)]

    response = InferResponse("m", "2", outputs=[Tensor("Y", datatype, tensor.shape, tensor.data)])
    message = grpc_codec.encode_response(response, decoded)
    assert message.id == "id-1"
    assert list(message.outputs[0].shape) == list(array.shape)
    assert message.raw_output_contents[0] == wire.raw_input_contents[0]


def test_codec_zero_copy_and_read_only() -> None:
    data = np.arange(4, dtype=np.float32)
    message = service_pb2.ModelInferRequest(model_name="m", raw_input_contents=[data.tobytes()])
    message.inputs.add(name="X", datatype="FP32", shape=[4])
    tensor = grpc_codec.decode_request(message).inputs[0]
    # a read-only view of the message's buffer, not a copy
    assert not tensor.data.flags.owndata
    assert not tensor.data.flags.writeable
    assert tensor.data.tolist() == data.tolist()


def test_codec_records_shared_memory_parameters() -> None:
    message = service_pb2.ModelInferRequest(model_name="m")
    spec = message.inputs.add(name="X", datatype="FP32", shape=[1])
    spec.parameters["shared_memory_region"].string_param = "r"
    spec.parameters["shared_memory_byte_size"].int64_param = 4
    tensor = grpc_codec.decode_request(message).inputs[0]
    # the data plane reads the region; the codec only keeps the parameters
    assert tensor.data.size == 0
    assert tensor.parameters == {"shared_memory_region": "r", "shared_memory_byte_size": 4}


class _BrokenDataPlane:
    def server_metadata(self) -> dict[str, object]:
        raise RuntimeError("boom")

    def model_metadata(self, name: str, version: str = "") -> dict[str, object]:
        raise NotFound(f"Request for unknown model: '{name}' is not found")

    def cuda_shm_register(self, name: str) -> None:
        raise InvalidArgument(f"no GPU for '{name}'")


def test_errors_map_to_status_codes() -> None:
    """InferenceErrors become their status, anything else INTERNAL, over a real call."""

    async def run() -> None:
        options = ServerOptions(model_repositories=[], grpc_address="127.0.0.1", grpc_port=0)
        frontend = GrpcFrontend(_BrokenDataPlane(), options)  # type: ignore[arg-type]
        await frontend.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ServerMetadata(service_pb2.ServerMetadataRequest())
                assert info.value.code() == grpc.StatusCode.INTERNAL
                assert "boom" in (info.value.details() or "")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="x"))
                assert info.value.code() == grpc.StatusCode.NOT_FOUND
                assert info.value.details() == "Request for unknown model: 'x' is not found"
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.CudaSharedMemoryRegister(
                        service_pb2.CudaSharedMemoryRegisterRequest(name="r")
                    )
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        finally:
            await frontend.stop(0)

    asyncio.run(run())


def test_frontend_binding() -> None:
    async def run() -> None:
        options = ServerOptions(model_repositories=[], grpc_address="127.0.0.1", grpc_port=0)
        first = GrpcFrontend(_BrokenDataPlane(), options)  # type: ignore[arg-type]
        await first.start()
        try:
            assert first.port > 0
            taken = ServerOptions(
                model_repositories=[], grpc_address="127.0.0.1", grpc_port=first.port
            )
            second = GrpcFrontend(_BrokenDataPlane(), taken)  # type: ignore[arg-type]
            with pytest.raises(OSError, match=f"127.0.0.1:{first.port}"):
                await second.start()
        finally:
            await first.stop(0)

    asyncio.run(run())
