"""The scenarios of NVIDIA's Python client examples, over TensorFlow GraphDef models we build.

``openeas.testing.framework_models.write_tf_example_repository`` writes GraphDef models
laid out like Triton's example model repository (``simple``, ``simple_int8``,
``simple_string``, ``simple_identity``, ``simple_sequence``, ``simple_dyna_sequence``:
Triton's tensor names and configs, our graphs).  Each test plays what one of
``triton-inference-server/client``'s ``src/python/examples`` does, with the real
``tritonclient``, and checks what that example checks; ``tests/models/README.md`` maps
every example to its test.
"""

from __future__ import annotations

import asyncio
import queue
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import (
    InferenceServerException,
    np_to_triton_dtype,
    serialize_byte_tensor,
    serialized_byte_size,
)

from openeas.testing import framework_models as fm

pytest.importorskip(
    "tensorflow", reason="TensorFlow is not installed (pip install 'openeas[tensorflow]')"
)

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.ones((1, 16), dtype=np.int32)
# What the sequence examples send: a first value, then VALUES (negated for the second).
VALUES = [11, 7, 5, 3, 2, 0, 1]
EXAMPLE_MODELS = sorted(
    [
        "simple",
        "simple_int8",
        "simple_string",
        "simple_identity",
        "simple_sequence",
        "simple_dyna_sequence",
    ]
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fm.write_tf_example_repository(tmp_path_factory.mktemp("tf-examples"))


@pytest.fixture(scope="module")
def server(launch, repo):
    return launch(repo, "--allow-client-shm=true", timeout=120)


def _inputs(module: Any, arrays: dict[str, np.ndarray], binary: bool = True) -> list:
    inputs = []
    for name, array in arrays.items():
        inp = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        if module is httpclient or module is httpaio:
            inp.set_data_from_numpy(array, binary_data=binary)
        else:
            inp.set_data_from_numpy(array)
        inputs.append(inp)
    return inputs


def _check_add_sub(result: Any, a: np.ndarray = A, b: np.ndarray = B) -> None:
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


# -- simple_{http,grpc}_infer_client, grpc_explicit_int*_content_client ------------------


@pytest.mark.parametrize("binary", [True, False])
def test_plain_infer_http(client, binary):
    outputs = [
        httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")
    ]
    result = client.infer(
        "simple", _inputs(httpclient, {"INPUT0": A, "INPUT1": B}, binary), outputs=outputs
    )
    _check_add_sub(result)
    with pytest.raises(InferenceServerException) as info:
        client.infer("wrong_model_name", _inputs(httpclient, {"INPUT0": A, "INPUT1": B}))
    assert info.value.message().startswith("Request for unknown model")


def test_plain_infer_grpc_and_int8(grpc_client):
    result = grpc_client.infer("simple", _inputs(grpcclient, {"INPUT0": A, "INPUT1": B}))
    _check_add_sub(result)
    a8, b8 = A.astype(np.int8), B.astype(np.int8)
    result = grpc_client.infer("simple_int8", _inputs(grpcclient, {"INPUT0": a8, "INPUT1": b8}))
    assert result.as_numpy("OUTPUT0").dtype == np.int8
    _check_add_sub(result, a8, b8)
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("wrong_model_name", _inputs(grpcclient, {"INPUT0": A, "INPUT1": B}))
    assert info.value.message().startswith("Request for unknown model")


# -- simple_{http,grpc}_async_infer_client, simple_{http,grpc}_aio_infer_client ----------


def test_async_infer_http_and_grpc(client, grpc_client):
    pending = [
        client.async_infer("simple", _inputs(httpclient, {"INPUT0": A + i, "INPUT1": B}))
        for i in range(4)
    ]
    for i, request in enumerate(pending):
        _check_add_sub(request.get_result(), A + i, B)

    done: queue.Queue = queue.Queue()
    for i in range(4):
        grpc_client.async_infer(
            "simple",
            _inputs(grpcclient, {"INPUT0": A + i, "INPUT1": B}),
            partial(lambda n, result, error: done.put((n, result, error)), i),
        )
    for _ in range(4):
        i, result, error = done.get(timeout=60)
        assert error is None
        _check_add_sub(result, A + i, B)


def test_aio_clients(server):
    async def run() -> None:
        http = httpaio.InferenceServerClient(server.http_url)
        grpc = grpcaio.InferenceServerClient(server.grpc_url)
        try:
            assert await http.is_server_live() and await grpc.is_server_ready()
            assert await http.is_model_ready("simple") and await grpc.is_model_ready("simple")
            results = await asyncio.gather(
                http.infer("simple", _inputs(httpaio, {"INPUT0": A, "INPUT1": B})),
                grpc.infer("simple", _inputs(grpcaio, {"INPUT0": A, "INPUT1": B})),
            )
            for result in results:
                _check_add_sub(result)
        finally:
            await http.close()
            await grpc.close()

    asyncio.run(run())


# -- simple_{http,grpc}_string_infer_client, grpc_explicit_byte_content_client ----------


@pytest.mark.parametrize("binary", [True, False])
def test_strings_http(client, binary):
    a = np.array([[str(x).encode() for x in A[0]]], dtype=np.object_)
    b = np.array([[str(x).encode() for x in B[0]]], dtype=np.object_)
    outputs = [
        httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")
    ]
    result = client.infer(
        "simple_string", _inputs(httpclient, {"INPUT0": a, "INPUT1": b}, binary), outputs=outputs
    )
    assert [int(x) for x in result.as_numpy("OUTPUT0")[0]] == list((A + B)[0])
    assert [int(x) for x in result.as_numpy("OUTPUT1")[0]] == list((A - B)[0])

    text = np.array([[b"he\x00llo"] * 16], dtype=np.object_)
    result = client.infer(
        "simple_identity",
        _inputs(httpclient, {"INPUT0": text}, binary=True),
        outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)],
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), text)


def test_strings_grpc(grpc_client):
    a = np.array([[str(x).encode() for x in A[0]]], dtype=np.object_)
    b = np.array([[str(x).encode() for x in B[0]]], dtype=np.object_)
    result = grpc_client.infer("simple_string", _inputs(grpcclient, {"INPUT0": a, "INPUT1": b}))
    assert [int(x) for x in result.as_numpy("OUTPUT0")[0]] == list((A + B)[0])
    text = np.array([[b"he\x00llo"] * 16], dtype=np.object_)
    result = grpc_client.infer("simple_identity", _inputs(grpcclient, {"INPUT0": text}))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), text)


# -- simple_{http,grpc}_health_metadata, simple_grpc_custom_args/keepalive_client ------------


def test_health_and_metadata(client, grpc_client):
    assert client.is_server_live() and client.is_server_ready()
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert client.is_model_ready("simple") and grpc_client.is_model_ready("simple")
    assert client.get_server_metadata()["name"] == grpc_client.get_server_metadata().name
    meta = client.get_model_metadata("simple")
    assert meta["platform"] == "tensorflow_graphdef"
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
        ("INPUT0", "INT32", [-1, 16]),
        ("INPUT1", "INT32", [-1, 16]),
    ]
    grpc_meta = grpc_client.get_model_metadata("simple")
    assert [o.name for o in grpc_meta.outputs] == ["OUTPUT0", "OUTPUT1"]
    config = grpc_client.get_model_config("simple", as_json=True)["config"]
    assert config["max_batch_size"] == 8
    assert not grpc_client.is_model_ready("wrong_model_name")


def test_grpc_custom_args_and_keepalive(server):
    channel_args = [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 2**31 - 1),
        ("grpc.keepalive_timeout_ms", 20000),
        ("grpc.keepalive_permit_without_calls", False),
    ]
    keepalive = grpcclient.KeepAliveOptions(
        keepalive_time_ms=2**31 - 1, keepalive_timeout_ms=20000, http2_max_pings_without_data=2
    )
    for client in (
        grpcclient.InferenceServerClient(server.grpc_url, channel_args=channel_args),
        grpcclient.InferenceServerClient(server.grpc_url, keepalive_options=keepalive),
    ):
        with client:
            result = client.infer(
                "simple", _inputs(grpcclient, {"INPUT0": A, "INPUT1": B}), headers={"test": "1"}
            )
            _check_add_sub(result)


# -- simple_{http,grpc}_shm_client, simple_{http,grpc}_shm_string_client (system) ---------


def _shm_round_trip(
    client: Any, module: Any, model: str, a: np.ndarray, b: np.ndarray, out_bytes: int, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs from one system region, outputs into another; returns the two outputs."""
    if a.dtype == np.object_:
        data = [serialize_byte_tensor(a), serialize_byte_tensor(b)]
        sizes = [serialized_byte_size(x) for x in data]
    else:
        data, sizes = [a, b], [a.nbytes, b.nbytes]
    inp = shm.create_shared_memory_region(f"{key}_in", f"/{key}_in", sum(sizes))
    out = shm.create_shared_memory_region(f"{key}_out", f"/{key}_out", 2 * out_bytes)
    try:
        shm.set_shared_memory_region(inp, data)
        client.register_system_shared_memory(f"{key}_in", f"/{key}_in", sum(sizes))
        client.register_system_shared_memory(f"{key}_out", f"/{key}_out", 2 * out_bytes)
        inputs = [
            module.InferInput(name, list(a.shape), np_to_triton_dtype(a.dtype))
            for name in ("INPUT0", "INPUT1")
        ]
        inputs[0].set_shared_memory(f"{key}_in", sizes[0])
        inputs[1].set_shared_memory(f"{key}_in", sizes[1], offset=sizes[0])
        outputs = [module.InferRequestedOutput(n) for n in ("OUTPUT0", "OUTPUT1")]
        outputs[0].set_shared_memory(f"{key}_out", out_bytes)
        outputs[1].set_shared_memory(f"{key}_out", out_bytes, offset=out_bytes)
        result = client.infer(model, inputs, outputs=outputs)
        found = []
        for index, name in enumerate(("OUTPUT0", "OUTPUT1")):
            info = result.get_output(name)
            datatype = info["datatype"] if isinstance(info, dict) else info.datatype
            dtype = np.object_ if datatype == "BYTES" else np.int32
            # A copy: the array is a view of the region, which is destroyed below.
            contents = shm.get_contents_as_numpy(out, dtype, [1, 16], offset=index * out_bytes)
            found.append(np.array(contents, copy=True))
        status = client.get_system_shared_memory_status()
        assert len(status if isinstance(status, list) else status.regions) == 2
        return found[0], found[1]
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(inp)
        shm.destroy_shared_memory_region(out)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_system_shared_memory_int_and_string(client, grpc_client, protocol):
    c, module = (client, httpclient) if protocol == "http" else (grpc_client, grpcclient)
    total, diff = _shm_round_trip(c, module, "simple", A, B, A.nbytes, f"ex_{protocol}_int")
    np.testing.assert_array_equal(total, A + B)
    np.testing.assert_array_equal(diff, A - B)
    a = np.array([[str(x).encode() for x in A[0]]], dtype=np.object_)
    b = np.array([[str(x).encode() for x in B[0]]], dtype=np.object_)
    # Each answer string is at most 2 digits: 4 bytes of length + the text, 16 of them.
    total, diff = _shm_round_trip(c, module, "simple_string", a, b, 16 * 8, f"ex_{protocol}_str")
    assert [int(x) for x in total[0]] == list((A + B)[0])
    assert [int(x) for x in diff[0]] == list((A - B)[0])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_reuse_infer_objects_between_shm_and_regular(client, grpc_client, protocol):
    """reuse_infer_objects_client: the same InferInput/InferRequestedOutput objects switch
    between system shared memory and data in the request, and back."""
    c, module = (client, httpclient) if protocol == "http" else (grpc_client, grpcclient)
    key = f"reuse_{protocol}"
    inputs = [module.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    outputs = [module.InferRequestedOutput(n) for n in ("OUTPUT0", "OUTPUT1")]
    handles = {
        n: shm.create_shared_memory_region(f"{key}_{n}", f"/{key}_{n}", A.nbytes)
        for n in ("in0", "in1", "out0", "out1")
    }
    try:
        shm.set_shared_memory_region(handles["in0"], [A])
        shm.set_shared_memory_region(handles["in1"], [B])
        for n in handles:
            c.register_system_shared_memory(f"{key}_{n}", f"/{key}_{n}", A.nbytes)
        for round_ in range(2):
            for inp, n in zip(inputs, ("in0", "in1"), strict=True):
                inp.set_shared_memory(f"{key}_{n}", A.nbytes)
            for out, n in zip(outputs, ("out0", "out1"), strict=True):
                out.set_shared_memory(f"{key}_{n}", A.nbytes)
            c.infer("simple", inputs, outputs=outputs)
            total = shm.get_contents_as_numpy(handles["out0"], np.int32, [1, 16])
            np.testing.assert_array_equal(np.array(total, copy=True), A + B)

            inputs[0].set_data_from_numpy(A)
            inputs[1].set_data_from_numpy(B * (round_ + 2))
            for out in outputs:
                out.unset_shared_memory()
            result = c.infer("simple", inputs, outputs=outputs)
            _check_add_sub(result, A, B * (round_ + 2))
    finally:
        c.unregister_system_shared_memory()
        for handle in handles.values():
            shm.destroy_shared_memory_region(handle)


# -- simple_{http,grpc}_sequence_sync_infer_client, *_sequence_stream_infer_client --------


def _expected(first: int, values: list[int], sequence_id: int, dyna: bool) -> list[int]:
    """What the examples expect: the first value + 1 (START), then each value; with the
    CORRID model the last value (END) plus the sequence ID."""
    expected = [first + 1, *values]
    if dyna:
        expected[-1] += sequence_id
    return expected


def _sequence_request(module: Any, value: int) -> list:
    return _inputs(module, {"INPUT": np.full((1, 1), value, dtype=np.int32)})


def _sync_sequence(client: Any, module: Any, model: str, sequence_id: int, values: list[int]):
    results = []
    for index, value in enumerate(values):
        result = client.infer(
            model,
            _sequence_request(module, value),
            sequence_id=sequence_id,
            sequence_start=index == 0,
            sequence_end=index == len(values) - 1,
        )
        results.append(int(result.as_numpy("OUTPUT")[0][0]))
    return results


@pytest.mark.parametrize("model", ["simple_sequence", "simple_dyna_sequence"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sequence_sync(client, grpc_client, protocol, model):
    c, module = (client, httpclient) if protocol == "http" else (grpc_client, grpcclient)
    dyna = model == "simple_dyna_sequence"
    negated = [-v for v in VALUES]
    assert _sync_sequence(c, module, model, 1000, [0, *VALUES]) == _expected(0, VALUES, 1000, dyna)
    assert _sync_sequence(c, module, model, 1001, [100, *negated]) == _expected(
        100, negated, 1001, dyna
    )


@pytest.mark.parametrize("model", ["simple_sequence", "simple_dyna_sequence"])
def test_sequence_stream_interleaved(server, model):
    """Two sequences sent alternately on one stream: each keeps its own control inputs."""
    dyna = model == "simple_dyna_sequence"
    sequences = {1000: [0, *VALUES], 1001: [100, *[-v for v in VALUES]]}
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for index in range(len(VALUES) + 1):
            for sequence_id, values in sequences.items():
                client.async_stream_infer(
                    model,
                    _sequence_request(grpcclient, values[index]),
                    request_id=f"{sequence_id}_{index}",
                    sequence_id=sequence_id,
                    sequence_start=index == 0,
                    sequence_end=index == len(VALUES),
                )
        got: dict[int, dict[int, int]] = {1000: {}, 1001: {}}
        for _ in range(2 * (len(VALUES) + 1)):
            result, error = answers.get(timeout=60)
            assert error is None, error
            sequence_id, index = result.get_response().id.split("_")
            got[int(sequence_id)][int(index)] = int(result.as_numpy("OUTPUT")[0][0])
        client.stop_stream()
    for sequence_id, values in sequences.items():
        answer = [got[sequence_id][i] for i in range(len(values))]
        assert answer == _expected(values[0], values[1:], sequence_id, dyna)


def test_sequence_aio_stream(server):
    async def run() -> list[int]:
        client = grpcaio.InferenceServerClient(server.grpc_url)
        values = [0, *VALUES]

        async def requests():
            for index, value in enumerate(values):
                yield {
                    "model_name": "simple_sequence",
                    "inputs": _sequence_request(grpcaio, value),
                    "sequence_id": 2000,
                    "sequence_start": index == 0,
                    "sequence_end": index == len(values) - 1,
                }

        found = []
        try:
            async for result, error in client.stream_infer(requests()):
                assert error is None, error
                found.append(int(result.as_numpy("OUTPUT")[0][0]))
        finally:
            await client.close()
        return found

    assert asyncio.run(run()) == _expected(0, VALUES, 2000, False)


# -- simple_{http,grpc}_model_control ------------------------------------------------------


@pytest.fixture(scope="module")
def control_server(launch, repo):
    return launch(repo, "--model-control-mode=explicit", timeout=120)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_control_with_config_override(control_server, protocol):
    """Load, reload with ``config`` (a JSON override of just max_batch_size), unload.

    As in Triton, the override replaces config.pbtxt and a GraphDef is not
    auto-completed, so the overridden model lists no tensors; a plain load restores it.
    """
    module = httpclient if protocol == "http" else grpcclient
    url = control_server.http_url if protocol == "http" else control_server.grpc_url
    with module.InferenceServerClient(url) as client:
        index = client.get_model_repository_index()
        names = [m["name"] for m in index] if protocol == "http" else [m.name for m in index.models]
        assert set(EXAMPLE_MODELS) <= set(names)
        client.load_model("simple")
        assert client.is_model_ready("simple")
        with pytest.raises(InferenceServerException) as info:
            client.load_model(
                "simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}'
            )
        assert "failed to load" in info.value.message()

        client.load_model("simple", config='{"max_batch_size":"16"}')
        assert client.is_model_ready("simple")
        config = client.get_model_config("simple")
        config = config if protocol == "http" else module_config(config)
        assert config["max_batch_size"] == 16
        assert config["platform"] == "tensorflow_graphdef"
        assert not config.get("input") and not config.get("output")
        with pytest.raises(InferenceServerException, match="unexpected inference input 'INPUT0'"):
            client.infer("simple", _inputs(module, {"INPUT0": A, "INPUT1": B}))

        client.load_model("simple")
        config = client.get_model_config("simple")
        config = config if protocol == "http" else module_config(config)
        assert config["max_batch_size"] == 8 and len(config["input"]) == 2
        client.unload_model("simple")
        assert not client.is_model_ready("simple")
        with pytest.raises(InferenceServerException) as info:
            client.load_model("wrong_model_name")
        assert "failed to load" in info.value.message()


def module_config(response: Any) -> dict:
    """A gRPC ``ModelConfigResponse`` as the JSON dict the HTTP client returns."""
    from google.protobuf import json_format

    return json_format.MessageToDict(
        response.config, preserving_proto_field_name=True, use_integers_for_enums=False
    )
