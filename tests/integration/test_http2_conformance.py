"""Our HTTP/2 transport against an independent implementation: the ``h2`` library as the
client, over real sockets, to the processor and to the gateway's gRPC front.

``h2`` checks every frame and header block it receives against RFC 9113 (and raises on
any violation), so a call that completes here is a call a strict peer accepts: our
SETTINGS, flow control (with a tiny window), trailers-only answers, PING, and the
concurrent-stream limit we advertise.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from openeas.testing.gateway import GatewayThread, upstream_of
from openeas.testing.server import ServerProcess, start_server
from tests.integration.http2_raw import INFER, LIVE, message, write_identity_repository

MAX_STREAMS = 64
TOKEN = "conformance-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repository = tmp_path_factory.mktemp("conformance_repo")
    write_identity_repository(repository)
    process = start_server(
        repository,
        f"--grpc-max-concurrent-streams={MAX_STREAMS}",
        log_path=tmp_path_factory.mktemp("logs") / "server.log",
    )
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def gateway(server: ServerProcess) -> Iterator[GatewayThread]:
    with GatewayThread() as gw:
        gw.publish("svc", TOKEN, [upstream_of(server, "i0")])
        yield gw


class H2Client:
    """A gRPC client made of ``h2``'s connection state machine and a blocking socket."""

    def __init__(self, port: int, settings: dict[int, int] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.results: dict[int, dict[str, Any]] = {}
        self.events: list[Any] = []
        self.flush()

    def close(self) -> None:
        self.sock.close()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def start(self, path: str, payload: bytes, **metadata: str) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *metadata.items(),
        ]
        self.conn.send_headers(stream_id, headers)
        self.conn.send_data(stream_id, message(payload), end_stream=True)
        self.results[stream_id] = {"headers": {}, "data": b"", "ended": False}
        return stream_id

    def wait(self, stream_ids: list[int]) -> None:
        """Read and answer frames until every stream in ``stream_ids`` has ended."""
        self.flush()
        while not all(self.results[s]["ended"] for s in stream_ids):
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            for event in self.conn.receive_data(data):
                self._event(event)
            self.flush()

    def _event(self, event: Any) -> None:
        self.events.append(event)
        result = self.results.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            assert result is not None
            result["headers"].update(dict(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            assert result is not None
            result["data"] += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
            assert result is not None
            result["ended"] = True

    def call(self, path: str, payload: bytes, **metadata: str) -> dict[str, Any]:
        stream_id = self.start(path, payload, **metadata)
        self.wait([stream_id])
        return self.results[stream_id]


def _infer_request(values: np.ndarray, id_: str = "") -> bytes:
    request = service_pb2.ModelInferRequest(model_name="identity", id=id_)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=list(values.shape))
    request.raw_input_contents.append(values.astype(np.float32).tobytes())
    return request.SerializeToString()


def _output(result: dict[str, Any]) -> service_pb2.ModelInferResponse:
    assert result["headers"]["grpc-status"] == "0", result["headers"]
    return service_pb2.ModelInferResponse.FromString(result["data"][5:])


def test_unary_calls_and_our_settings(server: ServerProcess) -> None:
    client = H2Client(server.grpc_port)
    try:
        live = client.call(LIVE, b"")
        assert live["headers"][":status"] == "200"
        assert service_pb2.ServerLiveResponse.FromString(live["data"][5:]).live
        values = np.arange(16, dtype=np.float32)
        response = _output(client.call(INFER, _infer_request(values)))
        np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<f4"), values)
        remote = client.conn.remote_settings
        assert remote.max_concurrent_streams == MAX_STREAMS
        assert remote.max_header_list_size == 64 * 1024
    finally:
        client.close()


def test_concurrent_calls_up_to_the_advertised_limit(server: ServerProcess) -> None:
    client = H2Client(server.grpc_port)
    try:
        client.call(LIVE, b"")  # our SETTINGS have arrived
        ids = [
            client.start(INFER, _infer_request(np.float32([n]), str(n))) for n in range(MAX_STREAMS)
        ]
        with pytest.raises(h2.exceptions.TooManyStreamsError):  # h2 honours our limit
            client.start(LIVE, b"")
        client.wait(ids)
        for n, stream_id in enumerate(ids):
            assert _output(client.results[stream_id]).id == str(n)
    finally:
        client.close()


def test_tiny_receive_window(server: ServerProcess) -> None:
    """Our answers split to a 16-byte window and resumed as h2 acknowledges them."""
    client = H2Client(server.grpc_port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16})
    try:
        values = np.arange(1000, dtype=np.float32)
        response = _output(client.call(INFER, _infer_request(values)))
        np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], "<f4"), values)
        sizes = [len(e.data) for e in client.events if isinstance(e, h2.events.DataReceived)]
        assert max(sizes) <= 16 and len(sizes) > 100
    finally:
        client.close()


def test_ping_and_unknown_method(server: ServerProcess) -> None:
    client = H2Client(server.grpc_port)
    try:
        client.conn.ping(b"conform!")
        result = client.call("/inference.GRPCInferenceService/Nope", b"")
        assert result["headers"]["grpc-status"] == "12"  # trailers-only UNIMPLEMENTED
        acks = [e for e in client.events if isinstance(e, h2.events.PingAckReceived)]
        assert [a.ping_data for a in acks] == [b"conform!"]
    finally:
        client.close()


def test_gateway_front(gateway: GatewayThread) -> None:
    client = H2Client(gateway.grpc_port)
    try:
        values = np.arange(8, dtype=np.float32)
        ok = client.call(INFER, _infer_request(values), authorization=TOKEN)
        np.testing.assert_array_equal(
            np.frombuffer(_output(ok).raw_output_contents[0], "<f4"), values
        )
        refused = client.call(INFER, _infer_request(values), authorization="nope")
        assert refused["headers"]["grpc-status"] == "16"  # UNAUTHENTICATED, trailers-only
        assert client.conn.remote_settings.max_concurrent_streams == 256
    finally:
        client.close()
