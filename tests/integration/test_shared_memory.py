"""Triton's system shared memory extension over HTTP and gRPC, with Triton's own clients.

Regions are created with ``tritonclient.utils.shared_memory`` (POSIX shm under /dev/shm)
and registered with a server started with ``--allow-client-shm=true``; inputs are read
from and outputs written into them on an ONNX ``add_sub`` model and a Python BYTES
identity model.  A second server runs with the default (shared memory disabled).
"""

from __future__ import annotations

import gc
import itertools
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2
from tritonclient.utils import (
    InferenceServerException,
    serialize_byte_tensor,
    serialized_byte_size,
)

from openeas.protocol import grpc_codec, http_codec
from openeas.protocol.errors import InvalidArgument
from openeas.server.shared_memory import SharedMemoryRegistry
from openeas.testing.onnx_models import ADD_SUB_CONFIG, write_add_sub_model, write_model_config
from openeas.testing.server import ServerProcess
from tests.integration.conftest import copy_test_model, raw_request, wait_until

pytestmark = pytest.mark.python_backend


TENSOR_BYTES = 64  # one [1, 16] FP32 tensor
PROTOCOLS = ["http", "grpc"]
_keys = itertools.count()


# -- servers and clients ----------------------------------------------------------------


@pytest.fixture(scope="module")
def marker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slow-markers")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, marker_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("shm-repo")
    write_add_sub_model(root / "simple" / "1")
    write_model_config(root / "simple", ADD_SUB_CONFIG)
    copy_test_model(root, "identity_bytes")
    copy_test_model(
        root,
        "slow",
        replace={'string_value: "0.2"': 'string_value: "1.0"'},
        config_extra=f'parameters: {{ key: "marker_dir" value: {{ string_value: "{marker_dir}" }} }}\n',
    )
    return root


@pytest.fixture(scope="module")
def server(launch, repo) -> ServerProcess:
    return launch(repo, "--allow-client-shm=true")


@pytest.fixture(scope="module")
def disabled_server(launch, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    root = tmp_path_factory.mktemp("shm-disabled-repo")
    write_add_sub_model(root / "simple" / "1")
    write_model_config(root / "simple", ADD_SUB_CONFIG)
    return launch(root)


class Client:
    """One of Triton's clients with its module (``httpclient`` or ``grpcclient``)."""

    def __init__(self, protocol: str, server: ServerProcess) -> None:
        self.protocol = protocol
        self.module: Any = httpclient if protocol == "http" else grpcclient
        url = server.http_url if protocol == "http" else server.grpc_url
        self.client: Any = self.module.InferenceServerClient(url)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def status(self, name: str = "") -> list[dict[str, Any]]:
        """The region status, as HTTP's JSON list (gRPC's map converted)."""
        result = self.client.get_system_shared_memory_status(name)
        if self.protocol == "http":
            return result
        return [
            {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
            for r in result.regions.values()
        ]

    def output_params(self, result: Any, name: str) -> dict[str, Any]:
        output = result.get_output(name)
        assert output is not None, name
        if self.protocol == "http":
            return output.get("parameters", {})
        return grpc_codec.decode_parameters(output.parameters)

    def output_shape(self, result: Any, name: str) -> list[int]:
        output = result.get_output(name)
        return list(output["shape"] if self.protocol == "http" else output.shape)


@pytest.fixture(params=PROTOCOLS)
def client(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[Client]:
    c = Client(request.param, server)
    yield c
    # leave no region registered for the next test
    c.unregister_system_shared_memory()
    c.close()


Create = Callable[[str, int], tuple[Any, str]]


@pytest.fixture
def create_region() -> Iterator[Create]:
    """Create shared memory objects (unique keys); all are destroyed after the test."""
    handles: list[Any] = []

    def create(name: str, byte_size: int) -> tuple[Any, str]:
        key = f"/openeas_test_{os.getpid()}_{next(_keys)}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        handles.append(handle)
        return handle, key

    yield create
    for handle in handles:
        shm.destroy_shared_memory_region(handle)


def _error(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return exc.value.message()


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


def _add_sub_data() -> tuple[np.ndarray, np.ndarray]:
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.full((1, 16), 3.0, dtype=np.float32)
    return a, b


# -- registration and status ------------------------------------------------------------


def test_register_and_status(client: Client, create_region: Create) -> None:
    _, key = create_region("first", 128)
    _, key2 = create_region("second", 4096 + 64)
    client.register_system_shared_memory("first", key, 128)
    client.register_system_shared_memory("second", key2, 64, offset=4096)
    assert client.status("first") == [{"name": "first", "key": key, "offset": 0, "byte_size": 128}]
    everything = sorted(client.status(), key=lambda r: r["name"])
    assert everything == [
        {"name": "first", "key": key, "offset": 0, "byte_size": 128},
        {"name": "second", "key": key2, "offset": 4096, "byte_size": 64},
    ]


def test_status_format(server: ServerProcess, create_region: Create) -> None:
    _, key = create_region("raw", 32)
    response = raw_request(
        server,
        "POST",
        "/v2/systemsharedmemory/region/raw/register",
        f'{{"key": "{key}", "offset": 8, "byte_size": 16}}',
    )
    try:
        assert response.status == 200, response
        response = raw_request(server, "GET", "/v2/systemsharedmemory/status")
        assert response.status == 200
        assert response.headers["content-type"].startswith("application/json")
        assert response.json() == [{"name": "raw", "key": key, "offset": 8, "byte_size": 16}]
        response = raw_request(server, "GET", "/v2/systemsharedmemory/region/raw/status")
        assert response.json() == [{"name": "raw", "key": key, "offset": 8, "byte_size": 16}]
        # status is GET only, the others POST only
        assert raw_request(server, "POST", "/v2/systemsharedmemory/status").status == 405
        assert raw_request(server, "GET", "/v2/systemsharedmemory/unregister").status == 405
        assert raw_request(server, "GET", "/v2/systemsharedmemory/region/raw/what").status == 404
    finally:
        response = raw_request(server, "POST", "/v2/systemsharedmemory/region/raw/unregister")
        assert response.status == 200
    assert raw_request(server, "GET", "/v2/systemsharedmemory/status").json() == []


def test_unregister_one_and_all(client: Client, create_region: Create) -> None:
    for name in ("r1", "r2", "r3"):
        _, key = create_region(name, 64)
        client.register_system_shared_memory(name, key, 64)
    client.unregister_system_shared_memory("r2")
    assert sorted(r["name"] for r in client.status()) == ["r1", "r3"]
    with pytest.raises(InferenceServerException) as exc:
        client.status("r2")
    assert "Unable to find system shared memory region: 'r2'" in _error(exc)
    if client.protocol == "grpc":
        assert _status(exc) == "StatusCode.NOT_FOUND"
    # an unknown name is no error (as in Triton)
    client.unregister_system_shared_memory("never-registered")
    client.unregister_system_shared_memory()
    assert client.status() == []
    # the name can be registered again once it is gone
    _, key = create_region("r1", 64)
    client.register_system_shared_memory("r1", key, 64)
    assert [r["name"] for r in client.status()] == ["r1"]


def test_register_errors(client: Client, create_region: Create) -> None:
    _, key = create_region("dup", 64)
    client.register_system_shared_memory("dup", key, 64)
    with pytest.raises(InferenceServerException) as exc:
        client.register_system_shared_memory("dup", key, 64)
    assert "shared memory region 'dup' already in manager" in _error(exc)
    if client.protocol == "grpc":
        assert _status(exc) == "StatusCode.ALREADY_EXISTS"

    with pytest.raises(InferenceServerException) as exc:
        client.register_system_shared_memory("missing", "/openeas_no_such_key", 64)
    assert "Unable to open shared memory region: '/openeas_no_such_key'" in _error(exc)

    with pytest.raises(InferenceServerException) as exc:
        client.register_system_shared_memory("too_big", key, 65)
    assert "failed to register shared memory region 'too_big': invalid args" in _error(exc)
    with pytest.raises(InferenceServerException) as exc:
        client.register_system_shared_memory("past_end", key, 32, offset=48)
    assert "invalid args" in _error(exc)

    with pytest.raises(InferenceServerException) as exc:
        client.register_system_shared_memory("escape", "/../etc/passwd", 8)
    assert "Unable to open shared memory region" in _error(exc)
    assert [r["name"] for r in client.status()] == ["dup"]


def test_register_http_body_errors(server: ServerProcess) -> None:
    path = "/v2/systemsharedmemory/region/bad/register"
    response = raw_request(server, "POST", path, '{"byte_size": 8}')
    assert response.status == 400
    assert "no 'key' field" in response.error()
    response = raw_request(server, "POST", path, '{"key": "/x"}')
    assert response.status == 400
    assert "no 'byte_size' field" in response.error()
    response = raw_request(server, "POST", path, '{"key": "/x", "byte_size": -1}')
    assert response.status == 400
    response = raw_request(server, "POST", "/v2/systemsharedmemory/register", "{}")
    assert response.status == 400
    assert "'region name' is necessary" in response.error()


# -- inference --------------------------------------------------------------------------


def _shm_inputs(client: Any, region: str, offsets: tuple[int, int] = (0, TENSOR_BYTES)):
    """add_sub's inputs in ``region``; ``client`` is a Client or a tritonclient module."""
    module = client.module if isinstance(client, Client) else client
    inputs = []
    for name, offset in zip(("INPUT0", "INPUT1"), offsets, strict=True):
        tensor = module.InferInput(name, [1, 16], "FP32")
        tensor.set_shared_memory(region, TENSOR_BYTES, offset=offset)
        inputs.append(tensor)
    return inputs


def _shm_outputs(client: Any, region: str, offsets: tuple[int, int] = (0, TENSOR_BYTES)):
    module = client.module if isinstance(client, Client) else client
    outputs = []
    for name, offset in zip(("OUTPUT0", "OUTPUT1"), offsets, strict=True):
        output = module.InferRequestedOutput(name)
        output.set_shared_memory(region, TENSOR_BYTES, offset=offset)
        outputs.append(output)
    return outputs


def test_infer_inputs_and_outputs_in_shm(client: Client, create_region: Create) -> None:
    a, b = _add_sub_data()
    in_handle, in_key = create_region("input_data", 2 * TENSOR_BYTES)
    out_handle, out_key = create_region("output_data", 2 * TENSOR_BYTES)
    shm.set_shared_memory_region(in_handle, [a, b])
    client.register_system_shared_memory("input_data", in_key, 2 * TENSOR_BYTES)
    client.register_system_shared_memory("output_data", out_key, 2 * TENSOR_BYTES)

    result = client.infer(
        "simple", _shm_inputs(client, "input_data"), outputs=_shm_outputs(client, "output_data")
    )
    for name, offset, expected in (("OUTPUT0", 0, a + b), ("OUTPUT1", TENSOR_BYTES, a - b)):
        assert client.output_shape(result, name) == [1, 16]
        # as Triton's answer: no parameters at all on an output in shared memory (NVIDIA's
        # C++ client reads `binary_data_size` from any `parameters` it finds)
        assert client.output_params(result, name) == {}
        data = shm.get_contents_as_numpy(out_handle, np.float32, [1, 16], offset=offset)
        np.testing.assert_array_equal(data, expected)

    response = result.get_response()
    if client.protocol == "http":
        # name, datatype and shape only: no data, no parameters, no binary buffers
        assert response["outputs"] == [
            {"name": name, "datatype": "FP32", "shape": [1, 16]} for name in ("OUTPUT0", "OUTPUT1")
        ]
    else:
        # one (empty) raw entry per output keeps the entries aligned, as in Triton
        assert list(response.raw_output_contents) == [b"", b""]


def test_infer_offsets_and_page_aligned_registration(client: Client, create_region: Create) -> None:
    """A region registered at an offset of its object; tensors at offsets in the region."""
    a, b = _add_sub_data()
    size = 8192 + 3 * TENSOR_BYTES
    handle, key = create_region("big", size)
    shm.set_shared_memory_region(handle, [b], offset=4100 + 16)
    shm.set_shared_memory_region(handle, [a], offset=4100 + 16 + TENSOR_BYTES)
    client.register_system_shared_memory("big", key, 16 + 3 * TENSOR_BYTES, offset=4100)
    result = client.infer(
        "simple",
        _shm_inputs(client, "big", offsets=(16 + TENSOR_BYTES, 16)),
        outputs=_shm_outputs(client, "big", offsets=(16 + 2 * TENSOR_BYTES, 16)),
    )
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(handle, np.float32, [1, 16], offset=4100 + 16 + 2 * TENSOR_BYTES),
        a + b,
    )
    # OUTPUT1 overwrote INPUT1's bytes after the inference
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(handle, np.float32, [1, 16], offset=4100 + 16), a - b
    )
    assert client.output_params(result, "OUTPUT1") == {}


def test_infer_mixed_shm_and_regular_tensors(client: Client, create_region: Create) -> None:
    a, b = _add_sub_data()
    in_handle, in_key = create_region("in0", TENSOR_BYTES)
    out_handle, out_key = create_region("out0", TENSOR_BYTES)
    shm.set_shared_memory_region(in_handle, [a])
    client.register_system_shared_memory("in0", in_key, TENSOR_BYTES)
    client.register_system_shared_memory("out0", out_key, TENSOR_BYTES)

    in0 = client.module.InferInput("INPUT0", [1, 16], "FP32")
    in0.set_shared_memory("in0", TENSOR_BYTES)
    in1 = client.module.InferInput("INPUT1", [1, 16], "FP32")
    in1.set_data_from_numpy(b)
    out0 = client.module.InferRequestedOutput("OUTPUT0")
    out0.set_shared_memory("out0", TENSOR_BYTES)
    out1 = client.module.InferRequestedOutput("OUTPUT1")
    result = client.infer("simple", [in0, in1], outputs=[out0, out1])

    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, [1, 16]), a + b)
    assert client.output_params(result, "OUTPUT0") == {}

    # shm input, every output returned normally
    result = client.infer("simple", [in0, in1])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_infer_json_outputs_next_to_shm_output(
    server: ServerProcess, create_region: Create
) -> None:
    """HTTP: JSON and binary outputs next to one in shared memory, in one response."""
    a, b = _add_sub_data()
    out_handle, out_key = create_region("json_out", TENSOR_BYTES)
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        client.register_system_shared_memory("json_out", out_key, TENSOR_BYTES)
        inputs = []
        for name, data in (("INPUT0", a), ("INPUT1", b)):
            tensor = httpclient.InferInput(name, [1, 16], "FP32")
            tensor.set_data_from_numpy(data, binary_data=False)
            inputs.append(tensor)
        out0 = httpclient.InferRequestedOutput("OUTPUT0")
        out0.set_shared_memory("json_out", TENSOR_BYTES)
        out1 = httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)
        result = client.infer("simple", inputs, outputs=[out0, out1])
        response = result.get_response()
        assert "data" not in response["outputs"][0]
        assert response["outputs"][1]["data"] == (a - b).reshape(-1).tolist()
        np.testing.assert_array_equal(
            shm.get_contents_as_numpy(out_handle, np.float32, [1, 16]), a + b
        )
    finally:
        client.unregister_system_shared_memory()
        client.close()


def test_infer_bytes_in_shm(client: Client, create_region: Create) -> None:
    """A Python model's BYTES input read from, and its output written to, shared memory."""
    values = np.array([b"alpha", b"", b"\x00\xffbinary", "ünï".encode()], dtype=np.object_)
    serialized = serialize_byte_tensor(values)
    size = serialized_byte_size(serialized)
    in_handle, in_key = create_region("bytes_in", size)
    out_handle, out_key = create_region("bytes_out", size + 16)
    shm.set_shared_memory_region(in_handle, [serialized])
    client.register_system_shared_memory("bytes_in", in_key, size)
    client.register_system_shared_memory("bytes_out", out_key, size + 16)

    tensor = client.module.InferInput("INPUT0", [len(values)], "BYTES")
    tensor.set_shared_memory("bytes_in", size)
    output = client.module.InferRequestedOutput("OUTPUT0")
    output.set_shared_memory("bytes_out", size + 16)
    result = client.infer("identity_bytes", [tensor], outputs=[output])

    assert client.output_params(result, "OUTPUT0") == {}
    data = shm.get_contents_as_numpy(out_handle, np.object_, [len(values)])
    assert data.tolist() == values.tolist()

    # a BYTES input whose byte size does not hold whole elements
    tensor.set_shared_memory("bytes_in", size - 1)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("identity_bytes", [tensor])
    assert "BYTES" in _error(exc)


def test_infer_errors(client: Client, create_region: Create) -> None:
    a, b = _add_sub_data()
    in_handle, in_key = create_region("in", 2 * TENSOR_BYTES)
    out_handle, out_key = create_region("small_out", TENSOR_BYTES)
    shm.set_shared_memory_region(in_handle, [a, b])
    client.register_system_shared_memory("in", in_key, 2 * TENSOR_BYTES)
    client.register_system_shared_memory("small_out", out_key, TENSOR_BYTES // 2)

    # unknown region, input and output
    with pytest.raises(InferenceServerException) as exc:
        client.infer("simple", _shm_inputs(client, "nope"))
    assert "Unable to find shared memory region: 'nope'" in _error(exc)
    if client.protocol == "grpc":
        assert _status(exc) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as exc:
        client.infer("simple", _shm_inputs(client, "in"), outputs=_shm_outputs(client, "nope"))
    assert "Unable to find shared memory region: 'nope'" in _error(exc)

    # byte size that does not match the input's shape
    tensor = client.module.InferInput("INPUT0", [1, 16], "FP32")
    tensor.set_shared_memory("in", TENSOR_BYTES // 2)
    other = client.module.InferInput("INPUT1", [1, 16], "FP32")
    other.set_data_from_numpy(b)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("simple", [tensor, other])
    assert (
        "input byte size mismatch for input 'INPUT0' for model 'simple'. Expected 64, got 32"
        in _error(exc)
    )
    if client.protocol == "grpc":
        assert _status(exc) == "StatusCode.INVALID_ARGUMENT"

    # a tensor past the end of the region
    tensor.set_shared_memory("in", TENSOR_BYTES, offset=TENSOR_BYTES + 4)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("simple", [tensor, other])
    assert "Invalid offset + byte size for shared memory region: 'in'" in _error(exc)

    # an output region too small for the result
    output = client.module.InferRequestedOutput("OUTPUT0")
    output.set_shared_memory("small_out", TENSOR_BYTES // 2)
    with pytest.raises(InferenceServerException) as exc:
        client.infer("simple", _shm_inputs(client, "in"), outputs=[output])
    assert (
        "shared memory size specified with the request for output 'OUTPUT0' (32 bytes) "
        "should be at least 64 bytes to hold the results" in _error(exc)
    )

    # the server is fine afterwards
    result = client.infer("simple", _shm_inputs(client, "in"))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_unregister_while_in_flight(
    server: ServerProcess, create_region: Create, marker_dir: Path
) -> None:
    """Unregistering the regions of a running request leaves it (and the server) intact."""
    data = np.arange(8, dtype=np.float32)
    in_handle, in_key = create_region("flight_in", data.nbytes)
    out_handle, out_key = create_region("flight_out", data.nbytes)
    shm.set_shared_memory_region(in_handle, [data])
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        client.register_system_shared_memory("flight_in", in_key, data.nbytes)
        client.register_system_shared_memory("flight_out", out_key, data.nbytes)
        tensor = grpcclient.InferInput("INPUT0", [8], "FP32")
        tensor.set_shared_memory("flight_in", data.nbytes)
        output = grpcclient.InferRequestedOutput("OUTPUT0")
        output.set_shared_memory("flight_out", data.nbytes)
        before = set(os.listdir(marker_dir))
        results: list[Any] = []
        worker = threading.Thread(
            target=lambda: results.append(client.infer("slow", [tensor], outputs=[output]))
        )
        worker.start()
        wait_until(lambda: set(os.listdir(marker_dir)) - before, what="slow model started")
        client.unregister_system_shared_memory()
        assert client.get_system_shared_memory_status().regions == {}
        worker.join(30)
        assert results, "the in-flight request failed"
        np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, [8]), data)
        assert client.is_server_live()
    finally:
        client.unregister_system_shared_memory()
        client.close()


def test_grpc_stream_with_shm(server: ServerProcess, create_region: Create) -> None:
    a, b = _add_sub_data()
    in_handle, in_key = create_region("stream_in", 2 * TENSOR_BYTES)
    out_handle, out_key = create_region("stream_out", 2 * TENSOR_BYTES)
    shm.set_shared_memory_region(in_handle, [a, b])
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answers: list[Any] = []
    try:
        client.register_system_shared_memory("stream_in", in_key, 2 * TENSOR_BYTES)
        client.register_system_shared_memory("stream_out", out_key, 2 * TENSOR_BYTES)
        client.start_stream(callback=lambda result, error: answers.append((result, error)))
        client.async_stream_infer(
            "simple",
            _shm_inputs(grpcclient, "stream_in"),
            outputs=_shm_outputs(grpcclient, "stream_out"),
        )
        client.stop_stream()
        assert len(answers) == 1 and answers[0][1] is None, answers
        np.testing.assert_array_equal(
            shm.get_contents_as_numpy(out_handle, np.float32, [1, 16], offset=TENSOR_BYTES),
            a - b,
        )
    finally:
        client.unregister_system_shared_memory()
        client.close()


# -- extensions and the default (disabled) ----------------------------------------------


def test_extension_reported(server: ServerProcess, disabled_server: ServerProcess) -> None:
    enabled = httpclient.InferenceServerClient(server.http_url)
    disabled = httpclient.InferenceServerClient(disabled_server.http_url)
    try:
        assert "system_shared_memory" in enabled.get_server_metadata()["extensions"]
        assert "system_shared_memory" not in disabled.get_server_metadata()["extensions"]
        assert "cuda_shared_memory" not in enabled.get_server_metadata()["extensions"]
    finally:
        enabled.close()
        disabled.close()


def test_disabled_by_default_http(disabled_server: ServerProcess, create_region: Create) -> None:
    for method, path in (
        ("GET", "/v2/systemsharedmemory/status"),
        ("GET", "/v2/systemsharedmemory/region/x/status"),
        ("POST", "/v2/systemsharedmemory/region/x/register"),
        ("POST", "/v2/systemsharedmemory/unregister"),
    ):
        response = raw_request(disabled_server, method, path, '{"key": "/x", "byte_size": 8}')
        assert response.status == 403, (path, response)
        assert "--allow-client-shm=true" in response.error()

    client = httpclient.InferenceServerClient(disabled_server.http_url)
    try:
        _, key = create_region("r", TENSOR_BYTES)
        with pytest.raises(InferenceServerException) as exc:
            client.register_system_shared_memory("r", key, TENSOR_BYTES)
        assert "--allow-client-shm=true" in _error(exc)
        a, b = _add_sub_data()
        in0 = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        in0.set_shared_memory("r", TENSOR_BYTES)
        in1 = httpclient.InferInput("INPUT1", [1, 16], "FP32")
        in1.set_data_from_numpy(b)
        with pytest.raises(InferenceServerException) as exc:
            client.infer("simple", [in0, in1])
        assert "--allow-client-shm=true" in _error(exc)
        in0.set_data_from_numpy(a)
        out0 = httpclient.InferRequestedOutput("OUTPUT0")
        out0.set_shared_memory("r", TENSOR_BYTES)
        with pytest.raises(InferenceServerException) as exc:
            client.infer("simple", [in0, in1], outputs=[out0])
        assert "--allow-client-shm=true" in _error(exc)
        # regular inference is unaffected
        np.testing.assert_array_equal(client.infer("simple", [in0, in1]).as_numpy("OUTPUT0"), a + b)
    finally:
        client.close()


def test_disabled_by_default_grpc(disabled_server: ServerProcess, create_region: Create) -> None:
    client = grpcclient.InferenceServerClient(disabled_server.grpc_url)
    try:
        _, key = create_region("r", TENSOR_BYTES)
        for call in (
            lambda: client.get_system_shared_memory_status(),
            lambda: client.register_system_shared_memory("r", key, TENSOR_BYTES),
            lambda: client.unregister_system_shared_memory(),
        ):
            with pytest.raises(InferenceServerException) as exc:
                call()
            assert _status(exc) == "StatusCode.UNAVAILABLE"
            assert "--allow-client-shm=true" in _error(exc)
        a, b = _add_sub_data()
        in0 = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        in0.set_shared_memory("r", TENSOR_BYTES)
        in1 = grpcclient.InferInput("INPUT1", [1, 16], "FP32")
        in1.set_data_from_numpy(b)
        with pytest.raises(InferenceServerException) as exc:
            client.infer("simple", [in0, in1])
        assert _status(exc) == "StatusCode.UNAVAILABLE"
        assert "--allow-client-shm=true" in _error(exc)
    finally:
        client.close()


def test_cuda_shared_memory_without_gpu(client: Client, create_region: Create) -> None:
    """Triton built without GPU: status is empty, unregister succeeds, register fails."""
    bad_request = "400" if client.protocol == "http" else "StatusCode.INVALID_ARGUMENT"
    not_found = "404" if client.protocol == "http" else "StatusCode.NOT_FOUND"
    status = client.get_cuda_shared_memory_status()
    assert (status if client.protocol == "http" else list(status.regions)) == []
    client.unregister_cuda_shared_memory()  # the examples' clean-up
    client.unregister_cuda_shared_memory("never_registered")

    with pytest.raises(InferenceServerException) as exc:
        client.register_cuda_shared_memory("gpu_region", b"\0" * 64, 0, 16)
    assert _error(exc) == (
        "failed to register CUDA shared memory region: 'gpu_region', GPUs not supported"
    )
    assert _status(exc) == bad_request
    with pytest.raises(InferenceServerException) as exc:
        client.get_cuda_shared_memory_status("gpu_region")
    assert _error(exc) == "Unable to find cuda shared memory region: 'gpu_region'"
    assert _status(exc) == not_found

    # a system region is not a CUDA one: CUDA unregister leaves it alone
    _, key = create_region("sys_region", TENSOR_BYTES)
    client.register_system_shared_memory("sys_region", key, TENSOR_BYTES)
    with pytest.raises(InferenceServerException) as exc:
        client.get_cuda_shared_memory_status("sys_region")
    assert "registered as system shared memory, not CUDA shared memory" in _error(exc)
    client.unregister_cuda_shared_memory("sys_region")
    client.unregister_cuda_shared_memory()
    assert [r["name"] for r in client.status()] == ["sys_region"]


def test_cuda_shared_memory_http_details(
    server: ServerProcess, disabled_server: ServerProcess
) -> None:
    response = raw_request(server, "POST", "/v2/cudasharedmemory/register", b"{}")
    assert response.status == 400
    assert response.error() == "'region name' is necessary to register cuda shared memory region"
    response = raw_request(server, "GET", "/v2/cudasharedmemory/region/r/unregister")
    assert response.status == 405
    # as the system shared memory API, refused where client shared memory is off
    response = raw_request(disabled_server, "POST", "/v2/cudasharedmemory/unregister")
    assert response.status == 403 and "--allow-client-shm=true" in response.error()


# -- codecs and the registry, in process --------------------------------------------------


def test_codecs_record_shared_memory_parameters() -> None:
    message = service_pb2.ModelInferRequest(model_name="m")
    spec = message.inputs.add(name="X", datatype="FP32", shape=[4])
    spec.parameters["shared_memory_region"].string_param = "r"
    spec.parameters["shared_memory_byte_size"].int64_param = 16
    message.inputs.add(name="Y", datatype="FP32", shape=[1])
    message.raw_input_contents.append(np.float32(1).tobytes())  # Y's: shm takes none
    out = message.outputs.add(name="Z")
    out.parameters["shared_memory_region"].string_param = "o"
    out.parameters["shared_memory_byte_size"].int64_param = 16
    request = grpc_codec.decode_request(message)
    x, y = request.inputs
    assert x.data.size == 0
    assert x.parameters == {"shared_memory_region": "r", "shared_memory_byte_size": 16}
    assert y.data.tolist() == [1.0]
    assert request.outputs is not None
    assert request.outputs[0].parameters["shared_memory_region"] == "o"

    body = (
        b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [4], "parameters": '
        b'{"shared_memory_region": "r", "shared_memory_byte_size": 16}}]}'
    )
    request = http_codec.decode_request(body, None, "m")
    assert request.inputs[0].parameters["shared_memory_region"] == "r"

    with pytest.raises(InvalidArgument, match="can not be specified without"):
        http_codec.decode_request(
            b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1], '
            b'"parameters": {"shared_memory_offset": 4}}]}',
            None,
            "m",
        )
    with pytest.raises(InvalidArgument, match="must not also have"):
        http_codec.decode_request(
            b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1], '
            b'"parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4}}]}',
            None,
            "m",
        )
    with pytest.raises(InvalidArgument, match="classification"):
        http_codec.decode_request(
            b'{"inputs": [], "outputs": [{"name": "Z", "parameters": {"classification": 2, '
            b'"shared_memory_region": "o", "shared_memory_byte_size": 4}}]}',
            None,
            "m",
        )


def test_registry_keeps_mapping_of_views_alive(create_region: Create) -> None:
    handle, key = create_region("live", 64)
    shm.set_shared_memory_region(handle, [np.arange(16, dtype=np.float32)])
    registry = SharedMemoryRegistry()
    registry.register("live", key, 0, 64)
    view = registry.view("live", 0, 64)
    array = np.frombuffer(view, dtype=np.float32)
    del view
    registry.unregister("live")
    assert registry.status() == []
    # the request that still holds the view reads valid memory
    assert array.tolist() == list(range(16))
    # ... and the mapping goes away with the last view
    mapping = weakref.ref(array.base.obj)
    assert mapping() is not None
    del array
    gc.collect()
    assert mapping() is None
    registry.register("live", key, 0, 64)
    registry.unregister_all()
    assert len(registry) == 0


@pytest.mark.parametrize("truncated", ["input", "output"])
def test_truncated_region_fails_the_request_not_the_server(
    client: Client, create_region: Create, server: ServerProcess, truncated: str
) -> None:
    """An object truncated after registration: reading or writing its pages would raise
    SIGBUS in the server; the request fails with a clear error instead."""
    a, b = _add_sub_data()
    in_handle, in_key = create_region("input_data", 2 * TENSOR_BYTES)
    out_handle, out_key = create_region("output_data", 2 * TENSOR_BYTES)
    shm.set_shared_memory_region(in_handle, [a, b])
    client.register_system_shared_memory("input_data", in_key, 2 * TENSOR_BYTES)
    client.register_system_shared_memory("output_data", out_key, 2 * TENSOR_BYTES)
    os.truncate(f"/dev/shm{in_key if truncated == 'input' else out_key}", 0)
    with pytest.raises(InferenceServerException) as info:
        client.infer(
            "simple",
            _shm_inputs(client, "input_data"),
            outputs=_shm_outputs(client, "output_data"),
        )
    assert "no longer backed" in _error(info) and "truncated to 0 bytes" in _error(info)
    assert server.process.poll() is None
    assert client.client.is_server_live()
