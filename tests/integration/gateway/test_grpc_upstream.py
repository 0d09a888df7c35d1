"""The gateway's own gRPC client (``gateway/grpc_upstream.py``) against a real HTTP/2 server.

The server is the processor's transport (``GrpcServer``) on a free port in the test's
event loop, with methods written for each behaviour: echoing metadata, failing with
trailers, waiting until cancelled, streaming, large messages.  Through the gateway the
same client is exercised end to end by ``test_grpc.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from openeas.gateway.deadline import Deadline, Expired
from openeas.gateway.grpc_upstream import GrpcUpstream
from openeas.gateway.upstream import ConnectFailed
from openeas.testing.server import free_port
from openeas.transport.grpc_call import GrpcError, Headers, Kind, Method
from openeas.transport.grpc_transport import GrpcServer
from openeas.transport.http2_peer import Http2Limits
from openeas.transport.sockets import bind_socket


def _same(message: bytes) -> bytes:
    return message


async def _echo(message: bytes, headers: Headers) -> bytes:
    """The message, then the ``x-test`` metadata value."""
    return message + b"|" + dict(headers).get(b"x-test", b"-")


async def _later(message: bytes) -> bytes:
    """The message, after a short wait (the call stays open meanwhile)."""
    await asyncio.sleep(0.01)
    return message


async def _fail(message: bytes) -> bytes:
    raise GrpcError(grpc.StatusCode.NOT_FOUND, "no such thing: caf\u00e9", [(b"x-why", b"gone")])


async def _chat(requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for message in requests:
        yield message[::-1]
        yield message


#: How many answers ``Flood`` has produced (read by the backpressure test).
produced: list[int] = [0]
FLOOD = 64
FLOOD_SIZE = 256 * 1024


async def _flood(message: bytes) -> AsyncIterator[bytes]:
    """FLOOD answers of FLOOD_SIZE bytes each, as fast as the transport takes them."""
    for n in range(FLOOD):
        produced[0] = n + 1
        yield bytes([n]) * FLOOD_SIZE


def _methods(waiting: asyncio.Event, cancelled: asyncio.Event) -> dict[bytes, Method]:
    async def wait_forever(message: bytes) -> bytes:
        waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    return {
        b"/t/Echo": Method(Kind.UNARY, _echo, _same, _same, metadata=True),
        b"/t/Fail": Method(Kind.UNARY, _fail, _same, _same),
        b"/t/Later": Method(Kind.UNARY, _later, _same, _same),
        b"/t/Wait": Method(Kind.UNARY, wait_forever, _same, _same),
        b"/t/Chat": Method(Kind.BIDI_STREAM, _chat, _same, _same),
        b"/t/Flood": Method(Kind.SERVER_STREAM, _flood, _same, _same),
    }


def _run(
    test: Callable[[GrpcUpstream, GrpcServer, dict[str, asyncio.Event]], Awaitable[Any]],
    limits: Http2Limits = Http2Limits(),  # noqa: B008 - frozen
) -> Any:
    """Serve the test methods, run ``test`` with a client of them, clean up."""

    async def main() -> Any:
        events = {"waiting": asyncio.Event(), "cancelled": asyncio.Event()}
        server = GrpcServer(
            _methods(events["waiting"], events["cancelled"]),
            max_message_size=64 * 1024 * 1024,
            limits=limits,
        )
        sock = bind_socket("127.0.0.1", 0)
        await server.start(sock)
        client = GrpcUpstream("127.0.0.1", sock.getsockname()[1], asyncio.get_running_loop())
        try:
            return await test(client, server, events)
        finally:
            client.close()
            await server.stop(0)

    return asyncio.run(main())


def _deadline(seconds: float = 30.0) -> Deadline:
    loop = asyncio.get_running_loop()
    return Deadline(loop, loop.time() + seconds)


def test_unary_calls_carry_metadata_and_share_one_connection() -> None:
    async def test(client: GrpcUpstream, server: GrpcServer, _: Any) -> list[bytes]:
        answers = await asyncio.gather(
            *(
                client.unary(b"/t/Echo", b"m%d" % n, [(b"x-test", b"v%d" % n)], _deadline())
                for n in range(20)
            )
        )
        assert len(server.connections) == 1
        return answers

    assert _run(test) == [b"m%d|v%d" % (n, n) for n in range(20)]


def test_error_status_message_and_trailers_come_back() -> None:
    async def test(client: GrpcUpstream, *_: Any) -> GrpcError:
        with pytest.raises(GrpcError) as info:
            await client.unary(b"/t/Fail", b"", [], _deadline())
        return info.value

    error = _run(test)
    assert error.status is grpc.StatusCode.NOT_FOUND
    assert error.message == "no such thing: caf\u00e9"
    assert list(error.trailers) == [(b"x-why", b"gone")]


def test_unknown_method_is_the_servers_unimplemented() -> None:
    async def test(client: GrpcUpstream, *_: Any) -> GrpcError:
        with pytest.raises(GrpcError) as info:
            await client.unary(b"/t/Nope", b"", [], _deadline())
        return info.value

    assert _run(test).status is grpc.StatusCode.UNIMPLEMENTED


def test_large_messages_wait_for_flow_control() -> None:
    big = bytes(range(256)) * (48 * 1024)  # 12 MB: past every window and frame size

    async def test(client: GrpcUpstream, *_: Any) -> bytes:
        return await client.unary(b"/t/Echo", big, [], _deadline())

    assert _run(test) == big + b"|-"


def test_expired_call_is_reset_and_cancelled_on_the_server() -> None:
    async def test(client: GrpcUpstream, _: GrpcServer, events: dict[str, asyncio.Event]) -> None:
        with pytest.raises(Expired):
            await client.unary(b"/t/Wait", b"", [], _deadline(0.3))
        assert events["waiting"].is_set()
        await asyncio.wait_for(events["cancelled"].wait(), 10)
        # the connection goes on serving
        assert await client.unary(b"/t/Echo", b"after", [], _deadline()) == b"after|-"

    _run(test)


def test_streaming_both_ways() -> None:
    async def test(client: GrpcUpstream, *_: Any) -> list[bytes]:
        async def requests() -> AsyncIterator[bytes]:
            for message in (b"abc", b"x" * 3_000_000, b"xyz"):
                yield message

        return [answer async for answer in client.stream(b"/t/Chat", requests(), [])]

    answers = _run(test)
    assert answers == [b"cba", b"abc", b"x" * 3_000_000, b"x" * 3_000_000, b"zyx", b"xyz"]


def test_a_slow_reader_holds_the_sender_back() -> None:
    """Answers are acknowledged as they are read, and a streaming handler waits while its
    answers wait for window: a reader that stops stops the producer, with ~5 MB in
    flight (the 4 MB stream window and the 1 MB send buffer) instead of all 16 MB."""

    async def test(client: GrpcUpstream, *_: Any) -> tuple[int, int, list[bytes]]:
        async def one() -> AsyncIterator[bytes]:
            yield b""

        produced[0] = 0
        answers = client.stream(b"/t/Flood", one(), [])
        first = await anext(answers)
        for _ in range(200):  # loop turns: without backpressure it would all be sent in one
            await asyncio.sleep(0)
        held_back = produced[0]
        rest = [answer async for answer in answers]
        return held_back, produced[0], [first, *rest]

    held_back, total, answers = _run(test)
    assert held_back < FLOOD // 2, held_back
    assert total == FLOOD
    assert answers == [bytes([n]) * FLOOD_SIZE for n in range(FLOOD)]


def test_a_stopped_server_refuses_then_cannot_be_reached() -> None:
    async def test(client: GrpcUpstream, server: GrpcServer, _: Any) -> None:
        assert await client.unary(b"/t/Echo", b"1", [], _deadline()) == b"1|-"
        await server.stop(0)  # GOAWAY, then the connection closes
        with pytest.raises(ConnectFailed):
            await client.unary(b"/t/Echo", b"2", [], _deadline())

    _run(test)


def test_nothing_listening_is_a_connect_failure() -> None:
    async def main() -> None:
        client = GrpcUpstream("127.0.0.1", free_port(), asyncio.get_running_loop())
        with pytest.raises(ConnectFailed):
            await client.unary(b"/t/Echo", b"", [], _deadline())

    asyncio.run(main())


def test_calls_beyond_the_instance_stream_limit_wait_for_a_slot() -> None:
    """The instance advertises SETTINGS_MAX_CONCURRENT_STREAMS 3: the client keeps within
    it (before: the extra calls were refused, and failed as if the instance were down)."""

    async def test(client: GrpcUpstream, server: GrpcServer, _: Any) -> None:
        await client.unary(b"/t/Echo", b"first", [], _deadline())  # its SETTINGS arrived
        answers = await asyncio.gather(
            *(client.unary(b"/t/Later", b"%d" % n, [], _deadline()) for n in range(20))
        )
        assert answers == [b"%d" % n for n in range(20)]

    _run(test, Http2Limits(max_concurrent_streams=3))
