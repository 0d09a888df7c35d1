"""The gRPC front end's HTTP/2 transport: flow control, limits, deadlines, framing.

Two kinds of clients: the real ones (tritonclient.grpc and grpcio's channels) for what
they exercise end to end (big messages split by flow control, compression, unknown
methods, cancellation), and raw HTTP/2 frames over a socket for what clients only do
now and then (CONTINUATION, padding, tiny windows, PING, bad prefaces, GOAWAY).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import grpc
import hpack
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from openeas.protocol import http2 as h2
from openeas.protocol.types import InferRequest, InferResponse
from openeas.server.frontends.grpc import GrpcFrontend
from openeas.server.options import ServerOptions
from openeas.testing.server import ServerProcess, start_server
from tests.integration.http2_raw import INFER, LIVE, RawClient, write_identity_repository
from tests.integration.http2_raw import message as _message


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = tmp_path_factory.mktemp("transport_repo")
    write_identity_repository(repository)
    process = start_server(repository, log_path=tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    assert process.stop() == 0, process.log()


def _identity(
    client: grpcclient.InferenceServerClient, data: np.ndarray, **kw: object
) -> np.ndarray:
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer("identity", [tensor], **kw)  # type: ignore[arg-type]
    out = result.as_numpy("OUTPUT0")
    assert out is not None
    return out


# -- real clients ----------------------------------------------------------------------


def test_large_messages_both_ways(server: ServerProcess) -> None:
    """32 MB each way: far beyond every initial window and frame size."""
    data = np.random.default_rng(0).random(8 * 1024 * 1024, dtype=np.float32)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        np.testing.assert_array_equal(_identity(client, data), data)
        small = np.arange(4, dtype=np.float32)
        np.testing.assert_array_equal(_identity(client, small), small)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(server: ServerProcess, algorithm: str) -> None:
    data = np.zeros(100_000, dtype=np.float32)  # compresses well
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        out = _identity(client, data, compression_algorithm=algorithm)
    np.testing.assert_array_equal(out, data)


def test_unknown_method_is_unimplemented(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/NoSuchCall")
        with pytest.raises(grpc.RpcError) as info:
            call(b"")
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
        assert "NoSuchCall" in info.value.details()  # type: ignore[attr-defined]
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(service_pb2.ServerLiveRequest()).live


def test_garbage_request_message_is_internal(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary(INFER)
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff\xff")
        assert info.value.code() == grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
        assert "parse" in info.value.details()  # type: ignore[attr-defined]


def test_many_concurrent_calls_on_one_connection(server: ServerProcess) -> None:
    async def run() -> None:
        async with grpc.aio.insecure_channel(server.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            calls = []
            for i in range(200):
                request = service_pb2.ModelInferRequest(model_name="identity", id=str(i))
                tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
                tensor.contents.fp32_contents.append(float(i))
                calls.append(stub.ModelInfer(request))
            responses = await asyncio.gather(*calls)
        for i, response in enumerate(responses):
            assert response.id == str(i)
            assert np.frombuffer(response.raw_output_contents[0], np.float32)[0] == i

    asyncio.run(run())


# -- in-process front end with a data plane we control -----------------------------------


class _GatedDataPlane:
    """Answers ModelInfer once ``release`` is set; counts calls and cancellations."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = 0

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return True

    async def infer(self, request: InferRequest) -> InferResponse:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return InferResponse(model_name=request.model_name, model_version="1", id=request.id)


async def _frontend(dataplane: object, **options: object) -> GrpcFrontend:
    settings = ServerOptions(
        model_repositories=[],
        grpc_address="127.0.0.1",
        grpc_port=0,
        **options,  # type: ignore[arg-type]
    )
    frontend = GrpcFrontend(dataplane, settings)  # type: ignore[arg-type]
    await frontend.start()
    return frontend


def _infer_request(id_: str = "r") -> service_pb2.ModelInferRequest:
    return service_pb2.ModelInferRequest(model_name="m", id=id_)


async def _wait_until(predicate: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_graceful_stop_finishes_running_calls_and_refuses_new_ones() -> None:
    async def run() -> None:
        dataplane = _GatedDataPlane()
        frontend = await _frontend(dataplane)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            running = asyncio.ensure_future(stub.ModelInfer(_infer_request("in-flight")))
            await asyncio.wait_for(dataplane.started.wait(), 5)
            stopping = asyncio.ensure_future(frontend.stop(10))
            await asyncio.sleep(0)  # let stop() send GOAWAY before the call is released
            assert not stopping.done()
            dataplane.release.set()
            response = await asyncio.wait_for(running, 5)
            assert response.id == "in-flight"
            await asyncio.wait_for(stopping, 5)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=2)
            assert info.value.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )

    asyncio.run(run())


def test_stop_after_grace_cancels_running_calls() -> None:
    async def run() -> None:
        dataplane = _GatedDataPlane()
        frontend = await _frontend(dataplane)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            running = asyncio.ensure_future(stub.ModelInfer(_infer_request()))
            await asyncio.wait_for(dataplane.started.wait(), 5)
            await frontend.stop(0.2)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.wait_for(running, 5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            await _wait_until(lambda: dataplane.cancelled == 1)

    asyncio.run(run())


def test_client_cancel_cancels_the_call() -> None:
    async def run() -> None:
        dataplane = _GatedDataPlane()
        frontend = await _frontend(dataplane)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                call = stub.ModelInfer(_infer_request())
                await asyncio.wait_for(dataplane.started.wait(), 5)
                call.cancel()
                await _wait_until(lambda: dataplane.cancelled == 1)
                assert (await stub.ServerLive(service_pb2.ServerLiveRequest())).live
        finally:
            await frontend.stop(0)

    asyncio.run(run())


def test_response_over_the_send_limit_is_resource_exhausted() -> None:
    class BigMetadata(_GatedDataPlane):
        def server_metadata(self) -> dict[str, object]:
            return {"name": "x" * 5000, "version": "1", "extensions": []}

    async def run() -> None:
        frontend = await _frontend(BigMetadata(), grpc_max_message_size=1000)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.ServerMetadata(service_pb2.ServerMetadataRequest())
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "Sent message larger than max" in (info.value.details() or "")
                assert (await stub.ServerLive(service_pb2.ServerLiveRequest())).live
        finally:
            await frontend.stop(0)

    asyncio.run(run())


# -- raw HTTP/2 frames -------------------------------------------------------------------


@pytest.fixture()
def frontend_port() -> Iterator[int]:
    """An in-process front end (its own loop in a thread) over the gated data plane."""
    import threading

    loop = asyncio.new_event_loop()
    dataplane_box: list[_GatedDataPlane] = []
    started = threading.Event()
    frontend_box: list[GrpcFrontend] = []

    async def start() -> None:
        dataplane = _GatedDataPlane()
        dataplane.release.set()
        dataplane_box.append(dataplane)
        frontend_box.append(await _frontend(dataplane))
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    assert started.is_set()
    yield frontend_box[0].port
    asyncio.run_coroutine_threadsafe(frontend_box[0].stop(0), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_raw_unary_call_with_continuation_padding_and_priority(frontend_port: int) -> None:
    client = RawClient(frontend_port)
    try:
        block = client.headers_block(LIVE)
        first, rest = block[:3], block[3:]
        padded = bytes([4]) + b"\x00\x00\x00\x00\x10" + first + b"\x00" * 4  # pad, priority
        client.send(
            h2.frame(h2.HEADERS, h2.PADDED | h2.PRIORITY_FLAG, 1, padded)
            + h2.frame(h2.CONTINUATION, 0, 1, rest[:2])
            + h2.frame(h2.CONTINUATION, h2.END_HEADERS, 1, rest[2:])
            + h2.frame(h2.DATA, h2.PADDED | h2.END_STREAM, 1, b"\x03" + _message(b"") + b"\0" * 3)
        )
        headers, data = client.response(1)
        assert headers[":status"] == "200"
        assert headers["grpc-status"] == "0"
        reply = service_pb2.ServerLiveResponse.FromString(data[5:])
        assert reply.live
    finally:
        client.close()


def test_raw_tiny_peer_window_splits_and_resumes(frontend_port: int) -> None:
    client = RawClient(frontend_port, {h2.SETTINGS_INITIAL_WINDOW_SIZE: 3})
    try:
        request = _infer_request("a-fairly-long-request-id-to-make-the-response-bigger")
        client.send(
            h2.frame(h2.HEADERS, h2.END_HEADERS, 1, client.headers_block(INFER))
            + h2.frame(h2.DATA, h2.END_STREAM, 1, _message(request.SerializeToString()))
        )
        received = b""
        trailers: dict[str, str] = {}
        while "grpc-status" not in trailers:
            kind, flags, sid, payload = client.read_frame()
            if kind == h2.SETTINGS and not flags & h2.ACK:
                client.send(h2.frame(h2.SETTINGS, h2.ACK, 0))
            elif kind == h2.DATA and sid == 1:
                assert len(payload) <= 3
                received += payload
                client.send(h2.window_update(1, len(payload)))
            elif kind == h2.HEADERS and sid == 1:
                trailers.update(client.decoder.decode(payload))
        assert trailers["grpc-status"] == "0"
        response = service_pb2.ModelInferResponse.FromString(received[5:])
        assert response.id == request.id
    finally:
        client.close()


def test_raw_ping_is_acknowledged(frontend_port: int) -> None:
    client = RawClient(frontend_port)
    try:
        client.send(h2.frame(h2.PING, 0, 0, b"12345678"))
        while True:
            kind, flags, _, payload = client.read_frame()
            if kind == h2.PING:
                assert flags & h2.ACK and payload == b"12345678"
                break
    finally:
        client.close()


@pytest.mark.parametrize(
    ("extra", "status"), [({"method": "GET"}, "405"), ({"content_type": "text/plain"}, "415")]
)
def test_raw_not_a_grpc_request(frontend_port: int, extra: dict[str, str], status: str) -> None:
    client = RawClient(frontend_port)
    try:
        block = client.headers_block(LIVE, **extra)
        client.send(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, 1, block))
        headers, _ = client.response(1)
        assert headers[":status"] == status
    finally:
        client.close()


def test_raw_deadline_is_enforced_by_the_server(frontend_port: int) -> None:
    # the gated data plane answers at once here, so hold the call with a half-open
    # request: the deadline fires while the server still waits for the message
    client = RawClient(frontend_port)
    try:
        block = client.headers_block(INFER, **{"grpc-timeout": "50m"})
        client.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, block))
        headers, _ = client.response(1)
        assert headers["grpc-status"] == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
    finally:
        client.close()


def test_raw_oversized_message_is_refused_before_it_arrives(frontend_port: int) -> None:
    client = RawClient(frontend_port)
    try:
        client.send(
            h2.frame(h2.HEADERS, h2.END_HEADERS, 1, client.headers_block(INFER))
            + h2.frame(h2.DATA, 0, 1, h2.MESSAGE_HEADER.pack(0, 2**32 - 1))  # only the prefix
        )
        headers, _ = client.response(1)
        assert headers["grpc-status"] == str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
        assert "larger than max" in headers["grpc-message"]
    finally:
        client.close()


def test_raw_bad_preface_gets_goaway(frontend_port: int) -> None:
    with socket.create_connection(("127.0.0.1", frontend_port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    frames = []
    while len(data) >= 9:
        high, low, kind, _, _ = h2.FRAME_HEADER.unpack_from(data)
        size = (high << 8) | low
        frames.append((kind, data[9 : 9 + size]))
        data = data[9 + size :]
    goaways = [payload for kind, payload in frames if kind == h2.GOAWAY]
    assert goaways and h2.read_u32(goaways[0], 4) == h2.PROTOCOL_ERROR


def test_raw_streams_after_goaway_are_refused(frontend_port: int) -> None:
    client = RawClient(frontend_port)
    try:
        client.send(h2.goaway(0, h2.NO_ERROR))
        block = client.headers_block(LIVE)
        client.send(
            h2.frame(h2.HEADERS, h2.END_HEADERS, 1, block)
            + h2.frame(h2.DATA, h2.END_STREAM, 1, _message(b""))
        )
        # the server closes the connection once it has no calls left; a new stream after
        # our GOAWAY is either refused or never read
        with pytest.raises(ConnectionError):
            while True:
                kind, _, sid, payload = client.read_frame()
                if kind == h2.RST_STREAM and sid == 1:
                    assert h2.read_u32(payload) == h2.REFUSED_STREAM
    finally:
        client.close()


def test_message_helpers() -> None:
    assert h2.parse_timeout(b"100m") == pytest.approx(0.1)
    assert h2.parse_timeout(b"2S") == 2.0
    assert h2.parse_timeout(b"1x") is None
    assert h2.parse_timeout(b"m") is None
    assert h2.encode_grpc_message("ok 100%") == b"ok 100%25"
    assert h2.encode_grpc_message("caf\u00e9\n") == b"caf%C3%A9%0A"
    decoder = h2.HeaderDecoder(65536)
    encoder = hpack.Encoder()
    first = encoder.encode([(":path", "/a"), ("x-key", "v")])
    second = encoder.encode([(":path", "/a"), ("x-key", "v")])  # indexed now
    assert decoder.decode(first) == [(b":path", b"/a"), (b"x-key", b"v")]
    assert decoder.decode(second) == [(b":path", b"/a"), (b"x-key", b"v")]
    assert decoder.decode(second) == [(b":path", b"/a"), (b"x-key", b"v")]  # cached
