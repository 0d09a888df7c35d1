"""Hostile HTTP/2 clients against a real ``openeas-server`` (its gRPC port).

The probes of issue 18 that broke the transport: calls reset in the same write as they
were made (rapid reset, CVE-2023-44487), floods of PING and SETTINGS from a client that
never reads the answers, streams opened without end, header blocks made of table size
updates.  Each test checks the server stays bounded (peak RSS, with a stated limit) and
keeps answering a well-behaved client afterwards.  The rules themselves (which frame
gets which error) are tested in memory in ``tests/unit/test_http2_protocol.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

from openeas.protocol import http2 as h2
from openeas.testing.server import ServerProcess, start_server
from tests.integration.conftest import copy_test_model, pending_requests, wait_until
from tests.integration.http2_raw import (
    INFER,
    LIVE,
    STREAM_INFER,
    RawClient,
    message,
    peak_rss,
    reset_peak_rss,
)

pytestmark = pytest.mark.python_backend

#: The most a flood may add to the server's peak RSS.
FLOOD_RSS_LIMIT = 48 * 1024 * 1024
#: seconds the ``slow`` model takes per request here
SLOW_S = 0.2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("hostile-models")
    copy_test_model(repo, "identity_fp32")
    copy_test_model(repo, "slow", replace={'string_value: "0.2"': f'string_value: "{SLOW_S}"'})
    copy_test_model(repo, "repeat_decoupled")
    process = start_server(
        repo,
        # the worst case for floods: pings are never refused by the ping policy
        "--grpc-http2-max-ping-strikes=0",
        log_path=tmp_path_factory.mktemp("logs") / "server.log",
        timeout=120,
    )
    yield process
    process.stop()


def _infer_message(model: str) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1])
    request.raw_input_contents.append(np.float32([1.0]).tobytes())
    return message(request.SerializeToString())


def _infer_ok(server: ServerProcess, model: str = "identity_fp32", timeout: float = 10) -> float:
    """One good call over a fresh tritonclient connection; its duration in seconds."""
    started = time.monotonic()
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        data = np.float32([[3.0]] if model == "identity_fp32" else [3.0])  # batched or not
        tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        result = client.infer(model, [tensor], client_timeout=timeout)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    return time.monotonic() - started


def _live(client: RawClient, stream_id: int) -> dict[str, str]:
    client.send(
        h2.frame(h2.HEADERS, h2.END_HEADERS, stream_id, client.headers_block(LIVE))
        + h2.frame(h2.DATA, h2.END_STREAM, stream_id, message(b""))
    )
    headers, _ = client.response(stream_id)
    return headers


# -- rapid reset ---------------------------------------------------------------------------


def _executions(server: ServerProcess, model: str) -> int:
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(server.http_url) as client:
        stats = client.get_inference_statistics(model)
    return sum(int(s["execution_count"]) for s in stats["model_stats"])


def test_rapid_reset_leaves_no_queued_work(server: ServerProcess) -> None:
    """200 ModelInfer calls, each reset in the same write: their queue places and slots
    are released at once (before: each waited for the garbage collector, and the model
    ran those it had not collected yet, SLOW_S each, ahead of later requests)."""
    before = _executions(server, "slow")
    client = RawClient(server.grpc_port)
    try:
        block = client.headers_block(INFER)
        body = _infer_message("slow")
        burst = b"".join(
            h2.frame(h2.HEADERS, h2.END_HEADERS, sid, block)
            + h2.frame(h2.DATA, h2.END_STREAM, sid, body)
            + h2.rst_stream(sid, h2.CANCEL)
            for sid in range(1, 401, 2)
        )
        client.send(burst)
        assert _live(client, 401)["grpc-status"] == "0"  # the connection is fine
    finally:
        client.close()
    wait_until(lambda: pending_requests(server, "slow") == 0, timeout=10, what="queue empty")
    # the worker may take one before the resets are delivered; no more run
    assert _executions(server, "slow") - before <= 2
    assert _infer_ok(server, "slow") < 10 * SLOW_S  # not behind 200 abandoned calls


def test_reset_flood_gets_enhance_your_calm(server: ServerProcess) -> None:
    client = RawClient(server.grpc_port)
    try:
        first = client.headers_block(INFER)
        indexed = client.headers_block(INFER)
        client.send(  # calls waiting for their message, reset
            b"".join(
                h2.frame(h2.HEADERS, h2.END_HEADERS, sid, first if sid == 1 else indexed)
                + h2.rst_stream(sid, h2.CANCEL)
                for sid in range(1, 4001, 2)
            )
        )
        assert client.goaway() == h2.ENHANCE_YOUR_CALM
    finally:
        client.close()
    _infer_ok(server)


# -- floods from a client that never reads ----------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [h2.frame(h2.PING, 0, 0, b"12345678"), h2.settings_frame({})],
    ids=["ping", "settings"],
)
def test_control_frame_flood_stays_bounded(server: ServerProcess, frame: bytes) -> None:
    pid = server.process.pid
    base = reset_peak_rss(pid)
    client = RawClient(server.grpc_port)
    try:
        client.flood(frame, 64 * 1024 * 1024)
        time.sleep(0)  # noqa: ASYNC251 - nothing to wait for; the flood is over
    finally:
        client.close()
    _infer_ok(server)
    assert peak_rss(pid) - base < FLOOD_RSS_LIMIT


def test_half_open_stream_flood_stays_bounded(server: ServerProcess) -> None:
    """Streams opened and never ended (200k before): beyond SETTINGS_MAX_CONCURRENT_STREAMS
    they are refused."""
    pid = server.process.pid
    base = reset_peak_rss(pid)
    client = RawClient(server.grpc_port)
    try:
        first = client.headers_block(INFER)
        indexed = client.headers_block(INFER)  # the same fields: all indexed now
        burst = h2.frame(h2.HEADERS, h2.END_HEADERS, 1, first) + b"".join(
            h2.frame(h2.HEADERS, h2.END_HEADERS, sid, indexed) for sid in range(3, 60001, 2)
        )
        client.flood(burst, len(burst), timeout=5)
        refused = 0
        client.sock.settimeout(5)
        try:
            while refused < 100:
                kind, _, _, payload = client.read_frame()
                if kind == h2.RST_STREAM and h2.read_u32(payload) == h2.REFUSED_STREAM:
                    refused += 1
        except (TimeoutError, ConnectionError):
            pass
        assert refused == 100
    finally:
        client.close()
    _infer_ok(server)
    assert peak_rss(pid) - base < FLOOD_RSS_LIMIT


def test_bidi_stream_flood_stays_bounded(server: ServerProcess) -> None:
    pid = server.process.pid
    base = reset_peak_rss(pid)
    client = RawClient(server.grpc_port)
    try:
        first = client.headers_block(STREAM_INFER)
        indexed = client.headers_block(STREAM_INFER)
        body = _infer_message("repeat_decoupled")
        burst = b"".join(
            h2.frame(h2.HEADERS, h2.END_HEADERS, sid, first if sid == 1 else indexed)
            + h2.frame(h2.DATA, 0, sid, body)
            for sid in range(1, 20001, 2)
        )
        client.flood(burst, len(burst), timeout=5)
        assert _live(client, 20001).get("rst") == str(h2.REFUSED_STREAM)  # still at the limit
    finally:
        client.close()
    _infer_ok(server)
    assert peak_rss(pid) - base < FLOOD_RSS_LIMIT


# -- HPACK -------------------------------------------------------------------------------


def test_header_block_of_table_size_updates_is_refused_at_once(server: ServerProcess) -> None:
    """~1 MB of size updates stalled the loop for seconds: refused before decoding."""
    client = RawClient(server.grpc_port)
    try:
        started = time.monotonic()
        client.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, b"\x3f\xe1\x1f" * 300_000))
        assert client.goaway() == h2.COMPRESSION_ERROR
        assert time.monotonic() - started < 2
    finally:
        client.close()
    _infer_ok(server)


def test_oversized_metadata_is_resource_exhausted(server: ServerProcess) -> None:
    client = RawClient(server.grpc_port)
    try:
        block = client.headers_block(LIVE, **{"x-big": "v" * 40_000, "x-big2": "w" * 30_000})
        client.send(
            h2.frame(h2.HEADERS, h2.END_HEADERS, 1, block)
            + h2.frame(h2.DATA, h2.END_STREAM, 1, message(b""))
        )
        headers, _ = client.response(1)
        assert headers["grpc-status"] == "8", headers
        assert _live(client, 3)["grpc-status"] == "0"
    finally:
        client.close()


@pytest.mark.parametrize("window", ["closed", "open"])
def test_answers_to_a_client_that_never_reads_stay_bounded(
    server: ServerProcess, window: str
) -> None:
    """1,500 calls with 64 KB answers, none read (+279 MB for pipelined HTTP before).
    With the client's windows shut the answers wait for window and the calls beyond the
    stream limit are refused; with them wide open they fill the socket until the server
    stops reading the client.  Each call in flight holds a few copies of its 64 KB
    (frames, message, tensors, answer): the limit is the stream limit's worth."""
    pid = server.process.pid
    settings = {h2.SETTINGS_INITIAL_WINDOW_SIZE: h2.MAX_WINDOW} if window == "open" else {}
    base = reset_peak_rss(pid)
    client = RawClient(server.grpc_port, settings)
    try:
        if window == "open":
            client.send(h2.window_update(0, h2.MAX_WINDOW - h2.DEFAULT_WINDOW))
        request = service_pb2.ModelInferRequest(model_name="identity_fp32")
        request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16384])
        request.raw_input_contents.append(bytes(4 * 16384))
        body = message(request.SerializeToString())
        first = client.headers_block(INFER)
        indexed = client.headers_block(INFER)
        burst = b"".join(
            h2.frame(h2.HEADERS, h2.END_HEADERS, sid, first if sid == 1 else indexed)
            + h2.frame(h2.DATA, h2.END_STREAM, sid, body)
            for sid in range(1, 3001, 2)
        )
        client.flood(burst, len(burst), timeout=5)
    finally:
        client.close()
    _infer_ok(server)
    assert peak_rss(pid) - base < 256 * 400 * 1024  # 256 streams of 64 KB calls
