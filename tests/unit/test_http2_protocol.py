"""The gRPC transport's HTTP/2 rules and limits, in memory (no socket): frames go into
``Http2Connection.data_received`` and come out of a fake transport, as uvicorn's
protocol tests do.  Each test states the rule (RFC 9113 section) or the limit it holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import hpack
import pytest

from openeas.protocol import http2 as h2
from openeas.transport.grpc_call import Kind, Method
from openeas.transport.grpc_transport import GrpcServer, Http2Connection
from openeas.transport.http2_peer import Http2Limits

UNARY = b"/t.S/Unary"
WAIT = b"/t.S/Wait"
BIDI = b"/t.S/Bidi"
RESOURCE_EXHAUSTED = "8"
UNAUTHENTICATED = "16"


class FakeTransport:
    """What Http2Connection uses of an asyncio transport, recording what it does."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Peer:
    """One in-memory connection: a client's frames in, the server's frames out."""

    def __init__(self, server: GrpcServer) -> None:
        self.transport = FakeTransport()
        self.conn = Http2Connection(server)
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.conn.data_received(h2.PREFACE)
        self._read = 0

    def send(self, *frames: bytes) -> None:
        self.conn.data_received(b"".join(frames))

    def headers(
        self, stream_id: int, path: bytes = UNARY, end: bool = False, **extra: str
    ) -> bytes:
        block = self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path.decode()),
                (":authority", "x"),
                ("content-type", "application/grpc"),
                *extra.items(),
            ]
        )
        flags = h2.END_HEADERS | (h2.END_STREAM if end else 0)
        return h2.frame(h2.HEADERS, flags, stream_id, block)

    async def frames(self) -> list[tuple[int, int, int, bytes]]:
        """Every frame the server wrote since the last call (after its writes flush)."""
        for _ in range(3):
            await asyncio.sleep(0)
        buf = bytearray(self.transport.data[self._read :])
        self._read = len(self.transport.data)
        return h2.take_frames(buf, h2.MAX_FRAME_LIMIT)

    async def goaway(self) -> int | None:
        """The error code of the server's GOAWAY, None if it sent none."""
        for kind, _, _, payload in await self.frames():
            if kind == h2.GOAWAY:
                assert self.transport.closed
                return h2.read_u32(payload, 4)
        return None

    async def resets(self) -> dict[int, int]:
        return {sid: h2.read_u32(p) for k, _, sid, p in await self.frames() if k == h2.RST_STREAM}

    def trailers(self, frames: list[tuple[int, int, int, bytes]], stream_id: int) -> dict[str, str]:
        found: dict[str, str] = {}
        for kind, _, sid, payload in frames:
            if kind == h2.HEADERS and sid == stream_id:
                found.update(self.decoder.decode(payload))
        return found


def message(payload: bytes = b"") -> bytes:
    return h2.MESSAGE_HEADER.pack(0, len(payload)) + payload


async def _echo(request: bytes) -> bytes:
    return request


async def _wait(request: bytes) -> bytes:
    await asyncio.Event().wait()
    return request


async def _bidi(requests: Any) -> Any:
    async for request in requests:
        await asyncio.Event().wait()
        yield request


def _server(limits: Http2Limits = Http2Limits(), **methods: Method) -> GrpcServer:  # noqa: B008
    table = {
        UNARY: Method(Kind.UNARY, _echo, bytes, bytes),
        WAIT: Method(Kind.UNARY, _wait, bytes, bytes),
        BIDI: Method(Kind.BIDI_STREAM, _bidi, bytes, bytes),
    }
    table.update({f"/t.S/{name}".encode(): m for name, m in methods.items()})
    return GrpcServer(table, max_message_size=1024 * 1024, limits=limits)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


# -- a call, for reference ----------------------------------------------------------------


def test_unary_call_and_initial_settings() -> None:
    async def body() -> None:
        peer = Peer(_server(Http2Limits(max_concurrent_streams=7, max_header_list_size=9000)))
        frames = await peer.frames()
        settings = dict(h2.parse_settings(frames[0][3]))
        assert settings[h2.SETTINGS_MAX_CONCURRENT_STREAMS] == 7
        assert settings[h2.SETTINGS_MAX_HEADER_LIST_SIZE] == 9000
        peer.send(peer.headers(1), h2.frame(h2.DATA, h2.END_STREAM, 1, message(b"hi")))
        frames = await peer.frames()
        assert peer.trailers(frames, 1)["grpc-status"] == "0"
        assert [p for k, _, _, p in frames if k == h2.DATA] == [message(b"hi")]

    run(body)


# -- RFC 9113 frame errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (h2.window_update(0, 0), h2.PROTOCOL_ERROR),  # 6.9: increment 0 on the connection
        (h2.window_update(0, h2.MAX_WINDOW), h2.FLOW_CONTROL_ERROR),  # 6.9.1: over 2^31-1
        (h2.rst_stream(0, h2.CANCEL), h2.PROTOCOL_ERROR),  # 6.4: RST_STREAM on stream 0
        (h2.rst_stream(9, h2.CANCEL), h2.PROTOCOL_ERROR),  # 5.1: on an idle stream
        (h2.frame(h2.RST_STREAM, 0, 1, b"\0\0\0"), h2.FRAME_SIZE_ERROR),  # 6.4: length 4
        (h2.frame(h2.DATA, 0, 9, message()), h2.PROTOCOL_ERROR),  # 5.1: DATA on idle stream
        (h2.frame(h2.DATA, 0, 2, message()), h2.PROTOCOL_ERROR),  # even: never opened
        (h2.window_update(9, 1), h2.PROTOCOL_ERROR),  # 5.1: WINDOW_UPDATE on idle stream
        (h2.frame(h2.PRIORITY, 0, 1, b"\0" * 4), h2.FRAME_SIZE_ERROR),  # 6.3: length 5
        (h2.frame(h2.PING, 0, 1, b"\0" * 8), h2.PROTOCOL_ERROR),  # 6.7: PING on a stream
        (h2.frame(h2.SETTINGS, h2.ACK, 0, b"\0" * 6), h2.FRAME_SIZE_ERROR),  # 6.5: ACK empty
        (h2.frame(h2.GOAWAY, 0, 0, b"\0" * 4), h2.FRAME_SIZE_ERROR),  # 6.8: 8 bytes at least
    ],
)
def test_connection_errors(frame: bytes, code: int) -> None:
    async def body() -> None:
        peer = Peer(_server())
        peer.send(peer.headers(1, WAIT), h2.frame(h2.DATA, h2.END_STREAM, 1, message()))
        await peer.frames()
        peer.send(frame)
        assert await peer.goaway() == code

    run(body)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (h2.window_update(1, 0), h2.PROTOCOL_ERROR),  # 6.9: increment 0 on a stream
        (h2.window_update(1, h2.MAX_WINDOW), h2.FLOW_CONTROL_ERROR),  # 6.9.1: over 2^31-1
        (h2.frame(h2.DATA, 0, 1, b"x"), h2.STREAM_CLOSED),  # 6.1: DATA after END_STREAM
    ],
)
def test_stream_errors_reset_the_stream_only(frame: bytes, code: int) -> None:
    async def body() -> None:
        peer = Peer(_server())
        peer.send(peer.headers(1, WAIT), h2.frame(h2.DATA, h2.END_STREAM, 1, message()))
        await peer.frames()
        peer.send(frame)
        assert await peer.resets() == {1: code}
        assert not peer.transport.closed
        assert not peer.conn._streams
        peer.send(peer.headers(3), h2.frame(h2.DATA, h2.END_STREAM, 3, message(b"ok")))
        assert peer.trailers(await peer.frames(), 3)["grpc-status"] == "0"

    run(body)


def test_a_lower_stream_id_than_one_used_is_a_connection_error() -> None:
    """RFC 9113 5.1.1 (before: the call was silently never answered)."""

    async def body() -> None:
        peer = Peer(_server())
        peer.send(peer.headers(5), h2.frame(h2.DATA, h2.END_STREAM, 5, message()))
        await peer.frames()
        peer.send(peer.headers(3), h2.frame(h2.DATA, h2.END_STREAM, 3, message()))
        assert await peer.goaway() == h2.PROTOCOL_ERROR

    run(body)


def test_initial_window_that_overflows_a_stream_window_is_a_connection_error() -> None:
    """RFC 9113 6.9.2: SETTINGS_INITIAL_WINDOW_SIZE pushing a stream over 2^31-1."""

    async def body() -> None:
        peer = Peer(_server())
        peer.send(peer.headers(1, WAIT), h2.frame(h2.DATA, h2.END_STREAM, 1, message()))
        peer.send(h2.window_update(1, h2.MAX_WINDOW - h2.DEFAULT_WINDOW))
        await peer.frames()
        peer.send(h2.settings_frame({h2.SETTINGS_INITIAL_WINDOW_SIZE: h2.DEFAULT_WINDOW + 1}))
        assert await peer.goaway() == h2.FLOW_CONTROL_ERROR

    run(body)


# -- receive windows ----------------------------------------------------------------------


def test_data_beyond_the_stream_window_is_a_flow_control_error() -> None:
    async def body() -> None:
        peer = Peer(_server())
        peer.send(peer.headers(1, WAIT))
        stream = peer.conn._streams[1]
        chunk = h2.MESSAGE_HEADER.pack(0, 1024 * 1024) + b"\0" * (1024 * 1024 - 5)
        stream.recv_window = len(chunk)  # what our window leaves it (by the test's say)
        peer.send(h2.frame(h2.DATA, 0, 1, chunk))
        peer.send(h2.frame(h2.DATA, 0, 1, b"x"))
        assert (await peer.resets())[1] == h2.FLOW_CONTROL_ERROR
        assert not peer.transport.closed

    run(body)


def test_data_beyond_the_connection_window_is_a_connection_error() -> None:
    async def body() -> None:
        peer = Peer(_server())
        peer.conn._recv_window = 10
        peer.send(peer.headers(1, WAIT), h2.frame(h2.DATA, 0, 1, b"\0" * 11))
        assert await peer.goaway() == h2.FLOW_CONTROL_ERROR

    run(body)


def test_a_streaming_handler_that_does_not_read_holds_the_window_back() -> None:
    """Received messages of a bidi call are acknowledged as the handler reads them, so a
    handler that stops reading stops the client (the buffer stays within the window)."""

    async def body() -> None:
        peer = Peer(_server())
        peer.send(peer.headers(1, BIDI))
        chunk = message(b"\0" * 100_000)
        for _ in range(30):
            peer.send(h2.frame(h2.DATA, 0, 1, chunk))
        frames = await peer.frames()
        stream = peer.conn._streams[1]
        # the handler read one message and waits: the rest is held, not acknowledged
        acked = sum(h2.read_u31(p) for k, _, sid, p in frames if k == h2.WINDOW_UPDATE and sid == 1)
        assert stream.unread >= 28 * len(chunk)
        assert acked <= 2 * len(chunk)
        assert stream.recv_window <= peer.conn.stream_window - 28 * len(chunk)
        peer.send(h2.rst_stream(1, h2.CANCEL))
        await peer.frames()
        assert peer.conn._recv_window + peer.conn._recv_unacked == peer.conn.connection_window

    run(body)


# -- limits -------------------------------------------------------------------------------


def test_streams_beyond_max_concurrent_streams_are_refused() -> None:
    async def body() -> None:
        peer = Peer(_server(Http2Limits(max_concurrent_streams=3)))
        for sid in (1, 3, 5, 7, 9):
            peer.send(peer.headers(sid, WAIT))
        assert await peer.resets() == {7: h2.REFUSED_STREAM, 9: h2.REFUSED_STREAM}
        assert sorted(peer.conn._streams) == [1, 3, 5]
        peer.send(h2.rst_stream(1, h2.CANCEL), peer.headers(11, WAIT))
        assert await peer.resets() == {}
        assert sorted(peer.conn._streams) == [3, 5, 11]

    run(body)


def test_rapid_reset_gets_enhance_your_calm() -> None:
    """CVE-2023-44487: calls opened and reset at once, beyond the burst."""

    async def body() -> None:
        peer = Peer(_server(Http2Limits(reset_burst=50, reset_rate=1.0)))
        frames = []
        for n in range(60):
            sid = 2 * n + 1
            frames += [
                peer.headers(sid, WAIT),
                h2.frame(h2.DATA, h2.END_STREAM, sid, message()),
                h2.rst_stream(sid, h2.CANCEL),
            ]
        peer.send(*frames)
        assert await peer.goaway() == h2.ENHANCE_YOUR_CALM

    run(body)


def test_resets_within_the_rate_are_fine() -> None:
    async def body() -> None:
        peer = Peer(_server(Http2Limits(reset_burst=50, reset_rate=1.0)))
        for n in range(40):
            sid = 2 * n + 1
            peer.send(peer.headers(sid, WAIT), h2.rst_stream(sid, h2.CANCEL))
        assert await peer.goaway() is None

    run(body)


def test_a_cancelled_call_releases_what_it_waits_for_at_once() -> None:
    """Rapid reset's leak: the call's coroutine is cancelled before its task ever ran."""
    released: list[str] = []

    async def holds(request: bytes) -> bytes:
        try:
            await asyncio.Event().wait()
        finally:
            released.append("slot")
        return request

    async def body() -> None:
        peer = Peer(_server(Holds=Method(Kind.UNARY, holds, bytes, bytes)))
        frames = []
        for n in range(20):
            sid = 2 * n + 1
            frames += [
                peer.headers(sid, b"/t.S/Holds"),
                h2.frame(h2.DATA, h2.END_STREAM, sid, message()),
                h2.rst_stream(sid, h2.CANCEL),
            ]
        peer.send(*frames)
        await peer.frames()
        assert len(released) == 20

    run(body)


@pytest.mark.parametrize(
    ("limits", "pings"),
    [(Http2Limits(), 3), (Http2Limits(max_ping_strikes=5), 6)],
)
def test_ping_flood_without_calls_gets_enhance_your_calm(limits: Http2Limits, pings: int) -> None:
    """gRPC's ping policy: more than ``max_ping_strikes`` pings too soon."""

    async def body() -> None:
        peer = Peer(_server(limits))
        for n in range(pings):
            peer.send(h2.frame(h2.PING, 0, 0, b"%08d" % n))
            assert await peer.goaway() is None
        peer.send(h2.frame(h2.PING, 0, 0, b"x" * 8))
        assert await peer.goaway() == h2.ENHANCE_YOUR_CALM

    run(body)


def test_pings_between_answers_are_no_strikes() -> None:
    async def body() -> None:
        peer = Peer(_server())
        for n in range(10):
            sid = 2 * n + 1
            peer.send(h2.frame(h2.PING, 0, 0, b"12345678"))
            peer.send(peer.headers(sid), h2.frame(h2.DATA, h2.END_STREAM, sid, message()))
            assert await peer.goaway() is None

    run(body)


def test_no_ping_limit_with_zero_strikes() -> None:
    async def body() -> None:
        peer = Peer(_server(Http2Limits(max_ping_strikes=0)))
        peer.send(*[h2.frame(h2.PING, 0, 0, b"12345678")] * 500)
        acks = [f for f in await peer.frames() if f[0] == h2.PING]
        assert len(acks) == 500

    run(body)


def test_settings_flood_to_a_client_that_does_not_read_gets_enhance_your_calm() -> None:
    async def body() -> None:
        peer = Peer(_server(Http2Limits(max_owed_acks=100)))
        peer.conn.pause_writing()  # the transport's buffer is full: the client does not read
        assert not peer.transport.reading  # and we stop reading it
        peer.send(*[h2.settings_frame({})] * 101)
        assert await peer.goaway() == h2.ENHANCE_YOUR_CALM

    run(body)


def test_settings_acks_that_are_read_are_not_counted() -> None:
    async def body() -> None:
        peer = Peer(_server(Http2Limits(max_owed_acks=100)))
        for _ in range(5):
            peer.send(*[h2.settings_frame({})] * 60)
            await peer.frames()
        assert not peer.transport.closed
        peer.conn.pause_writing()
        peer.conn.resume_writing()
        assert peer.transport.reading

    run(body)


def test_too_many_settings_entries() -> None:
    async def body() -> None:
        peer = Peer(_server())
        peer.send(h2.frame(h2.SETTINGS, 0, 0, b"\0\x09\0\0\0\0" * 33))  # unknown ids
        assert await peer.goaway() == h2.ENHANCE_YOUR_CALM

    run(body)


# -- HPACK --------------------------------------------------------------------------------


def test_header_block_over_the_limit_is_refused_before_decoding() -> None:
    """A HEADERS frame of table size updates only (the HPACK CPU probe)."""

    async def body() -> None:
        peer = Peer(_server(Http2Limits(max_header_list_size=4096)))
        peer.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, b"\x20" * 5000))
        assert await peer.goaway() == h2.COMPRESSION_ERROR

    run(body)


def test_header_block_in_continuations_is_bounded_as_it_arrives() -> None:
    async def body() -> None:
        peer = Peer(_server(Http2Limits(max_header_list_size=4096)))
        peer.send(h2.frame(h2.HEADERS, 0, 1, b"\x82" * 2000))
        peer.send(h2.frame(h2.CONTINUATION, 0, 1, b"\x82" * 2000))
        assert await peer.goaway() is None
        peer.send(h2.frame(h2.CONTINUATION, 0, 1, b"\x82" * 2000))
        assert await peer.goaway() == h2.COMPRESSION_ERROR

    run(body)


def test_empty_continuation_flood() -> None:
    async def body() -> None:
        peer = Peer(_server())
        peer.send(h2.frame(h2.HEADERS, 0, 1, b"\x82"), *[h2.frame(h2.CONTINUATION, 0, 1)] * 100)
        assert await peer.goaway() == h2.ENHANCE_YOUR_CALM

    run(body)


def test_more_than_two_table_size_updates_is_a_compression_error() -> None:
    async def body() -> None:
        peer = Peer(_server())
        block = b"\x20\x3f\xe1\x1f\x20" + peer.encoder.encode([(":method", "POST")])
        peer.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, block))
        assert await peer.goaway() == h2.COMPRESSION_ERROR

    run(body)


def test_two_table_size_updates_are_fine() -> None:
    async def body() -> None:
        peer = Peer(_server())
        head = peer.headers(1)
        block = b"\x20\x3f\xe1\x1f" + head[h2.FRAME_HEADER_SIZE :]  # 0, then 4096
        peer.send(
            h2.frame(h2.HEADERS, h2.END_HEADERS, 1, block),
            h2.frame(h2.DATA, h2.END_STREAM, 1, message(b"ok")),
        )
        assert peer.trailers(await peer.frames(), 1)["grpc-status"] == "0"

    run(body)


def test_header_list_over_the_limit_ends_the_call_only() -> None:
    """Decoded (HPACK stays in step) and refused: gRPC's 431, RESOURCE_EXHAUSTED."""

    async def body() -> None:
        peer = Peer(_server(Http2Limits(max_header_list_size=4096)))
        peer.send(peer.headers(1, **{"x-big": "v" * 3000, "x-more": "w" * 1500}))
        frames = await peer.frames()
        trailers = peer.trailers(frames, 1)
        assert trailers["grpc-status"] == RESOURCE_EXHAUSTED
        assert "header list" in trailers["grpc-message"]
        assert not peer.transport.closed
        peer.send(peer.headers(3), h2.frame(h2.DATA, h2.END_STREAM, 3, message(b"ok")))
        assert peer.trailers(await peer.frames(), 3)["grpc-status"] == "0"

    run(body)


def test_hpack_bomb_is_a_connection_error() -> None:
    """A small block of indexed fields naming one big table entry: stops decoding at
    twice the limit."""

    async def body() -> None:
        peer = Peer(_server(Http2Limits(max_header_list_size=4096)))
        first = peer.encoder.encode([("x-bomb", "b" * 3000)])  # enters the table
        peer.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, first))
        await peer.frames()
        peer.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 3, b"\xbe" * 100))  # entry 62
        assert await peer.goaway() == h2.COMPRESSION_ERROR

    run(body)


# -- admission on the headers -------------------------------------------------------------


def test_admit_refuses_a_call_before_its_message_is_read() -> None:
    from openeas.transport.grpc_call import GrpcError

    seen: list[Any] = []

    def admit(headers: list[tuple[bytes, bytes]]) -> str:
        if (b"authorization", b"good") not in headers:
            import grpc

            raise GrpcError(grpc.StatusCode.UNAUTHENTICATED, "no token")
        return "admitted"

    async def handler(request: bytes, admitted: Any) -> bytes:
        seen.append(admitted)
        return request

    async def body() -> None:
        method = Method(Kind.UNARY, handler, bytes, bytes, metadata=True, admit=admit)
        peer = Peer(_server(Auth=method))
        peer.send(peer.headers(1, b"/t.S/Auth"))  # no message yet: answered already
        frames = await peer.frames()
        assert peer.trailers(frames, 1)["grpc-status"] == UNAUTHENTICATED
        assert (h2.RST_STREAM, 1) in [(k, sid) for k, _, sid, _ in frames]
        assert not peer.conn._streams
        peer.send(h2.frame(h2.DATA, 0, 1, b"\0" * 100_000))  # ignored, not buffered
        peer.send(
            peer.headers(3, b"/t.S/Auth", authorization="good"),
            h2.frame(h2.DATA, h2.END_STREAM, 3, message(b"x")),
        )
        assert peer.trailers(await peer.frames(), 3)["grpc-status"] == "0"
        assert seen == ["admitted"]

    run(body)


# -- compressed messages ------------------------------------------------------------------


def test_decompression_bomb_is_resource_exhausted() -> None:
    import gzip

    async def body() -> None:
        peer = Peer(_server())  # max message 1 MiB
        bomb = gzip.compress(b"\0" * (8 * 1024 * 1024))
        peer.send(
            peer.headers(1, **{"grpc-encoding": "gzip"}),
            h2.frame(h2.DATA, h2.END_STREAM, 1, h2.MESSAGE_HEADER.pack(1, len(bomb)) + bomb),
        )
        trailers = peer.trailers(await peer.frames(), 1)
        assert trailers["grpc-status"] == RESOURCE_EXHAUSTED
        assert "decompressed" in trailers["grpc-message"]

    run(body)


def test_a_second_message_on_a_unary_call_is_refused_at_once() -> None:
    async def body() -> None:
        peer = Peer(_server())
        peer.send(peer.headers(1), h2.frame(h2.DATA, 0, 1, message(b"a") + message(b"b")))
        trailers = peer.trailers(await peer.frames(), 1)
        assert trailers["grpc-status"] == "12"  # UNIMPLEMENTED, as grpcio says it
        assert not peer.conn._streams

    run(body)


# -- a client that gives no window ------------------------------------------------------------


def test_a_zero_window_stalls_a_streaming_handler_at_a_bounded_buffer() -> None:
    from openeas.transport.http2_peer import STREAM_BUFFER

    async def endless(request: bytes) -> Any:
        while True:
            yield b"\0" * 100_000

    async def body() -> None:
        peer = Peer(_server(Flood=Method(Kind.SERVER_STREAM, endless, bytes, bytes)))
        peer.send(h2.settings_frame({h2.SETTINGS_INITIAL_WINDOW_SIZE: 0}))
        peer.send(peer.headers(1, b"/t.S/Flood"), h2.frame(h2.DATA, h2.END_STREAM, 1, message()))
        for _ in range(50):
            await asyncio.sleep(0)
        stream = peer.conn._streams[1]
        assert 0 < len(stream.pending) <= STREAM_BUFFER + 100_005
        assert peer.conn._blocked_bytes == len(stream.pending)
        peer.send(h2.rst_stream(1, h2.CANCEL))
        await peer.frames()
        assert peer.conn._blocked_bytes == 0

    run(body)


def test_new_calls_are_refused_while_answers_wait_for_window() -> None:
    async def body() -> None:
        peer = Peer(_server(Http2Limits(max_stalled_bytes=1_000_000)))
        peer.send(h2.settings_frame({h2.SETTINGS_INITIAL_WINDOW_SIZE: 0}))
        big = message(b"\0" * 300_000)
        for sid in (1, 3, 5, 7):
            peer.send(peer.headers(sid), h2.frame(h2.DATA, h2.END_STREAM, sid, big))
        await peer.frames()
        assert peer.conn._blocked_bytes > 1_000_000
        peer.send(peer.headers(9), h2.frame(h2.DATA, h2.END_STREAM, 9, message()))
        assert (await peer.resets())[9] == h2.REFUSED_STREAM
        # the client reads: windows open, the answers go, calls are taken again
        peer.send(h2.settings_frame({h2.SETTINGS_INITIAL_WINDOW_SIZE: 1_000_000}))
        peer.send(h2.window_update(0, 2_000_000))
        await peer.frames()
        assert peer.conn._blocked_bytes == 0
        peer.send(peer.headers(11), h2.frame(h2.DATA, h2.END_STREAM, 11, message(b"ok")))
        assert peer.trailers(await peer.frames(), 11)["grpc-status"] == "0"

    run(body)


# -- the pure header block assembly (protocol/http2.py) -------------------------------------


def _assembler(limit: int = 4096, frames: int = 8) -> h2.HeaderBlockAssembler:
    return h2.HeaderBlockAssembler(h2.HeaderDecoder(limit), frames)


def test_header_block_is_gathered_over_continuations() -> None:
    blocks = _assembler()
    blocks.start(3, h2.END_STREAM, b"ab")
    assert blocks.stream_id == 3
    assert blocks.add(3, 0, b"cd") is None
    assert blocks.add(3, h2.END_HEADERS, b"ef") == b"abcdef"
    assert blocks.stream_id is None  # other frames may come again
    assert blocks.flags == h2.END_STREAM  # the HEADERS frame's flags, for the block
    blocks.start(5, 0, b"x")  # the next block starts empty
    assert blocks.add(5, h2.END_HEADERS, b"y") == b"xy"


@pytest.mark.parametrize("started", [None, 1])
def test_continuation_that_continues_nothing_is_a_protocol_error(started: int | None) -> None:
    blocks = _assembler()
    if started is not None:
        blocks.start(started, 0, b"a")
    with pytest.raises(h2.ProtocolError) as caught:
        blocks.add(3, h2.END_HEADERS, b"b")  # RFC 9113 6.10: same stream, right after
    assert caught.value.code == h2.PROTOCOL_ERROR


def test_header_block_assembly_is_bounded() -> None:
    blocks = _assembler(limit=100, frames=3)
    with pytest.raises(h2.ProtocolError) as caught:
        blocks.start(1, 0, b"\x82" * 101)
    assert caught.value.code == h2.COMPRESSION_ERROR
    blocks.start(1, 0, b"\x82" * 60)
    with pytest.raises(h2.ProtocolError) as caught:
        blocks.add(1, 0, b"\x82" * 41)  # the block so far, not each frame, is bounded
    assert caught.value.code == h2.COMPRESSION_ERROR
    blocks = _assembler(limit=100, frames=3)
    blocks.start(1, 0, b"")
    for _ in range(3):
        assert blocks.add(1, 0, b"") is None
    with pytest.raises(h2.ProtocolError) as caught:
        blocks.add(1, 0, b"")
    assert caught.value.code == h2.ENHANCE_YOUR_CALM


# -- the gateway's client connection: the same Http2Peer from the other side ---------------


class Instance:
    """The gateway's connection to an instance, in memory: the instance's frames in."""

    def __init__(self) -> None:
        from openeas.gateway.grpc_upstream import GrpcConnection

        self.transport = FakeTransport()
        self.conn = GrpcConnection(b"x:1")
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]
        self.encoder = hpack.Encoder()

    def send(self, *frames: bytes) -> None:
        self.conn.data_received(b"".join(frames))

    def block(self, *fields: tuple[str, str]) -> bytes:
        return self.encoder.encode(list(fields))

    def answer_headers(self, stream_id: int) -> bytes:
        block = self.block((":status", "200"), ("content-type", "application/grpc"))
        return h2.frame(h2.HEADERS, h2.END_HEADERS, stream_id, block)

    def ok(self, stream_id: int) -> bytes:
        block = self.block(("grpc-status", "0"))
        return h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, stream_id, block)


def test_client_takes_a_message_split_over_data_frames() -> None:
    async def body() -> None:
        inst = Instance()
        call = inst.conn.open(UNARY, [], streaming=False, message=b"hi")
        answer = message(b"x" * 1000)
        inst.send(
            inst.answer_headers(call.id),
            h2.frame(h2.DATA, 0, call.id, answer[:3]),  # inside the length prefix
            h2.frame(h2.DATA, 0, call.id, answer[3:600]),
            h2.frame(h2.DATA, 0, call.id, answer[600:]),
            inst.ok(call.id),
        )
        assert await asyncio.wait_for(call.future, 30) == b"x" * 1000

    run(body)


def test_client_takes_several_messages_from_one_data_frame() -> None:
    async def body() -> None:
        inst = Instance()
        call = inst.conn.open(BIDI, [], streaming=True)
        assert call.queue is not None
        inst.send(
            inst.answer_headers(call.id),
            h2.frame(h2.DATA, 0, call.id, message(b"a") + message(b"") + message(b"c")[:4]),
            h2.frame(h2.DATA, 0, call.id, message(b"c")[4:]),
        )
        assert [call.queue.get_nowait() for _ in range(3)] == [b"a", b"", b"c"]
        assert call.queue.empty()

    run(body)


def test_client_refuses_a_compressed_answer() -> None:
    async def body() -> None:
        from openeas.transport.grpc_call import GrpcError

        inst = Instance()
        call = inst.conn.open(UNARY, [], streaming=False, message=b"hi")
        inst.send(
            inst.answer_headers(call.id),
            h2.frame(h2.DATA, 0, call.id, h2.MESSAGE_HEADER.pack(1, 2) + b"zz"),
        )
        with pytest.raises(GrpcError) as caught:
            await asyncio.wait_for(call.future, 30)
        assert caught.value.message == "compressed answer"
        for _ in range(3):
            await asyncio.sleep(0)
        sent = bytes(inst.transport.data)
        assert sent.startswith(h2.PREFACE)
        frames = h2.take_frames(bytearray(sent[len(h2.PREFACE) :]), h2.MAX_FRAME_LIMIT)
        resets = {sid: h2.read_u32(p) for k, _, sid, p in frames if k == h2.RST_STREAM}
        assert resets == {call.id: h2.CANCEL}  # the instance is told to stop

    run(body)


def test_client_gathers_trailers_over_continuations() -> None:
    async def body() -> None:
        inst = Instance()
        call = inst.conn.open(UNARY, [], streaming=False, message=b"hi")
        trailers = inst.block(("grpc-status", "0"), ("x-note", "y" * 50))
        inst.send(
            inst.answer_headers(call.id),
            h2.frame(h2.DATA, 0, call.id, message(b"ok")),
            h2.frame(h2.HEADERS, h2.END_STREAM, call.id, trailers[:10]),
            h2.frame(h2.CONTINUATION, 0, call.id, trailers[10:20]),
            h2.frame(h2.CONTINUATION, h2.END_HEADERS, call.id, trailers[20:]),
        )
        assert await asyncio.wait_for(call.future, 30) == b"ok"

    run(body)


def test_client_treats_a_frame_inside_a_header_block_as_a_connection_error() -> None:
    async def body() -> None:
        inst = Instance()
        call = inst.conn.open(UNARY, [], streaming=False, message=b"hi")
        block = inst.block((":status", "200"))
        inst.send(h2.frame(h2.HEADERS, 0, call.id, block), h2.frame(h2.PING, 0, 0, b"\0" * 8))
        assert inst.transport.closed
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(call.future, 30)

    run(body)
