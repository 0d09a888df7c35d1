"""A lean gRPC client to the instances: calls as bytes over one HTTP/2 connection each.

The gateway's gRPC front forwards message bytes and never looks inside them, so a
general gRPC client (grpcio: serialisation hooks, interceptors, C-core threads handing
events to the loop) costs it more than the rest of a call.  This client speaks just
what a pass-through needs, on the running loop, with the framing helpers the server
side uses (:mod:`openeas.protocol.http2`): one connection per instance with calls
multiplexed on it, request headers and message in one write, HPACK decoding of the
answers (cached while the instance sends the same header blocks), flow control both
ways (large messages wait for window; a stream's answers are acknowledged as they are
read, so a slow reader holds the instance back), PING, RST_STREAM, GOAWAY (calls the
instance did not take are refused, so the caller may retry them elsewhere), and a new
connection when stream ids run out.

Unary calls are :meth:`GrpcUpstream.unary` (bounded by the gateway's keepalive deadline;
an expired or abandoned call is reset, which cancels it on the instance); streaming
calls are :meth:`GrpcUpstream.stream`.  An instance's non-OK status comes back as a
:class:`~openeas.transport.grpc_call.GrpcError` with its message and
trailing metadata, to be relayed as is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Protocol
from urllib.parse import unquote

import grpc

from openeas.gateway.deadline import Deadline
from openeas.gateway.upstream import CONNECT_TIMEOUT_S, ConnectFailed, UpstreamClosed
from openeas.protocol import http2 as h2
from openeas.protocol import instance_token
from openeas.transport.grpc_call import GrpcError, Headers
from openeas.transport.http2_peer import STREAM_BUFFER, STREAM_WINDOW, Http2Limits, Http2Peer
from openeas.transport.sockets import connect_unix, grpc_unix_socket, set_nodelay

log = logging.getLogger(__name__)

#: HTTP/2 stream ids are 31 bits: a connection that used them up takes no new calls.
MAX_STREAM_ID = 2**31 - 1
#: What an instance's connection may cost the gateway (the instance is trusted more than
#: a client, but still bounded).
_LIMITS = Http2Limits()

_CODES = {code.value[0]: code for code in grpc.StatusCode}
#: ``:method: POST`` and ``:scheme: http`` (HPACK static entries 3 and 6), the gRPC
#: content type and ``te: trailers``.
_REQUEST_HEAD = (
    b"\x83\x86"
    + h2.encode_header(b"content-type", b"application/grpc")
    + h2.encode_header(b"te", b"trailers")
)
#: What an HTTP status other than 200 means for a gRPC call (gRPC's http-grpc-status-mapping).
_HTTP_TO_GRPC = {
    b"400": grpc.StatusCode.INTERNAL,
    b"401": grpc.StatusCode.UNAUTHENTICATED,
    b"403": grpc.StatusCode.PERMISSION_DENIED,
    b"404": grpc.StatusCode.UNIMPLEMENTED,
    b"429": grpc.StatusCode.UNAVAILABLE,
    b"502": grpc.StatusCode.UNAVAILABLE,
    b"503": grpc.StatusCode.UNAVAILABLE,
    b"504": grpc.StatusCode.UNAVAILABLE,
}


class Receiver(Protocol):
    """Who gets a unary call's outcome in a callback (instead of a future to await)."""

    def upstream_done(self, outcome: bytes | BaseException) -> None:
        """The answer message, or why there is none: GrpcError (the instance's status),
        ConnectFailed (refused: it did not run), UpstreamClosed (broken under it)."""


class _Call:
    """One call (HTTP/2 stream) on a connection."""

    __slots__ = (
        "id", "send_window", "pending", "end_pending", "writable", "recv", "messages",
        "queue", "future", "receiver", "recv_window", "recv_unacked", "unread",
        "headers_seen", "done",
    )  # fmt: skip

    def __init__(
        self, stream_id: int, send_window: int, streaming: bool, receiver: Receiver | None = None
    ) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.pending = bytearray()  # DATA waiting for flow-control window
        self.end_pending = False  # END_STREAM goes out after the pending DATA
        self.writable: asyncio.Event | None = None  # a stream's: set once pending is sent
        self.recv = bytearray()  # a message arriving in pieces
        self.messages: list[bytes] = []  # a unary call's answer
        #: A stream's answers as they come; ends with None (OK) or the error.
        self.queue: asyncio.Queue[bytes | BaseException | None] | None = (
            asyncio.Queue() if streaming else None
        )
        #: A unary call's outcome (unless a receiver takes it); a stream's end.
        self.future: asyncio.Future[bytes | None] | None = (
            None if receiver is not None else asyncio.get_running_loop().create_future()
        )
        self.receiver = receiver
        self.recv_window = STREAM_WINDOW
        self.recv_unacked = 0
        self.unread = 0  # a stream's received bytes still in its queue (not yet acked)
        self.headers_seen = False
        self.done = False


class GrpcConnection(Http2Peer):
    """One HTTP/2 connection to an instance, as the client."""

    def __init__(self, authority: bytes, extra: bytes = b"") -> None:
        super().__init__(_LIMITS)
        self._authority = h2.encode_header(b":authority", authority)
        #: encoded headers every call carries (the instance's internal token)
        self._extra = extra
        self._calls: dict[int, _Call] = {}
        #: the header block of a call without metadata to pass on, by method path
        self._request_heads: dict[bytes, bytes] = {}
        self._next_id = 1
        #: No new calls (GOAWAY received, or the connection is gone).
        self.closed = False
        #: Callers waiting for a stream below the instance's MAX_CONCURRENT_STREAMS.
        self._room_waiters: list[asyncio.Future[None]] = []

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        set_nodelay(transport)
        transport.write(  # type: ignore[attr-defined]
            h2.PREFACE + self._settings({h2.SETTINGS_ENABLE_PUSH: 0})
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.closed = True
        for call in list(self._calls.values()):
            self._end(call, UpstreamClosed("the instance closed the connection"))
        self._calls.clear()
        self._wake_room()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            self._take_frames()
        except h2.ProtocolError as exc:
            log.warning("HTTP/2 error from an instance: %s", exc)
            self._fail(exc.code, str(exc))

    # -- frames ------------------------------------------------------------------------

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        call = self._calls.pop(stream_id, None)
        if call is not None:
            code = h2.read_u32(payload) if len(payload) == 4 else h2.INTERNAL_ERROR
            if code == h2.REFUSED_STREAM:
                error: BaseException = ConnectFailed("the instance refused the call")
            else:
                error = UpstreamClosed(f"the instance reset the call (HTTP/2 error {code})")
            self._end(call, error)

    def _stream(self, stream_id: int) -> _Call | None:
        return self._calls.get(stream_id)

    def _open_streams(self) -> Iterable[_Call]:
        return self._calls.values()

    def _is_idle(self, stream_id: int) -> bool:
        return stream_id >= self._next_id or not stream_id & 1

    def _stream_error(self, call: _Call, code: int) -> None:
        self._calls.pop(call.id, None)
        self._write(h2.rst_stream(call.id, code))
        self._end(call, UpstreamClosed(f"the instance broke the call (HTTP/2 error {code})"))

    def _on_goaway(self, stream_id: int, payload: bytes) -> None:
        self.closed = True
        last = h2.read_u31(payload) if len(payload) >= 8 else 0
        for call in [c for c in self._calls.values() if c.id > last]:
            self._calls.pop(call.id, None)
            self._end(call, ConnectFailed("the instance is shutting down"))
        self._check_drained()

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        call = self._calls.get(stream_id)
        try:
            headers = self._decoder.decode(block)  # always, to keep HPACK's table in step
        except h2.HeaderListTooLarge as exc:
            if call is not None:
                self._reset(call, GrpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)))
            return
        if call is None:
            return
        if not call.headers_seen:
            call.headers_seen = True
            status = next((v for n, v in headers if n == b":status"), b"")
            if status != b"200":
                code = _HTTP_TO_GRPC.get(status, grpc.StatusCode.UNKNOWN)
                self._reset(call, GrpcError(code, f"the instance answered HTTP {status.decode()}"))
                return
            if not flags & h2.END_STREAM:
                return
        elif not flags & h2.END_STREAM:
            raise h2.ProtocolError("trailers without END_STREAM")
        self._calls.pop(stream_id, None)
        self._end(call, _status(headers))

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        size = len(payload)
        self._received(size)
        call = self._calls.get(stream_id)
        if call is None:
            if self._is_idle(stream_id):
                raise h2.ProtocolError(f"DATA on idle stream {stream_id}")
            return
        if not self._stream_received(call, size):
            return
        payload = h2.data_payload(flags, payload)
        if flags & h2.END_STREAM:
            self._calls.pop(stream_id, None)
            self._end(call, UpstreamClosed("the instance ended the call without a status"))
            return
        if call.queue is None or call.queue.empty():
            self._stream_consumed(call, size)
        else:  # answers wait to be read: acknowledged once they are (a slow reader
            call.unread += size  # holds the instance back; a partial message never waits)
        self._take_messages(call, payload)

    def _compressed(self, call: _Call, message: bytes) -> None:
        # we never offer a grpc-accept-encoding
        self._reset(call, GrpcError(grpc.StatusCode.INTERNAL, "compressed answer"))

    def _message(self, call: _Call, message: bytes) -> None:
        if call.queue is not None:
            call.queue.put_nowait(message)
        else:
            call.messages.append(message)

    # -- calls -------------------------------------------------------------------------

    def open(
        self,
        path: bytes,
        metadata: Headers,
        streaming: bool,
        message: bytes | None = None,
        receiver: Receiver | None = None,
    ) -> _Call:
        """Start a call: its headers, and with ``message`` its only request message
        (then the call is half-closed), in one write.  A unary call's outcome goes to
        ``receiver`` when given (then nothing awaits it), else to the call's future."""
        call = _Call(self._next_id, self._peer_window, streaming, receiver)
        self._next_id += 2
        if self._next_id > MAX_STREAM_ID:
            self.closed = True  # the next call opens a new connection; this one drains
        self._calls[call.id] = call
        block = self._request_heads.get(path) if not metadata else None
        if block is None:
            block = _REQUEST_HEAD + self._authority + h2.encode_header(b":path", path)
            for name, value in metadata:
                block += h2.encode_header(name, value)
            block += self._extra  # last: the instance reads the last token header
            if not metadata:  # the usual call: kept per method (a few dozen at most)
                self._request_heads[path] = block
        head = h2.frame(h2.HEADERS, h2.END_HEADERS, call.id, block)
        if message is None:
            self._write(head)
            return call
        data = h2.MESSAGE_HEADER.pack(0, len(message)) + message
        size = len(data)
        if size <= call.send_window and size <= self._send_window and size <= self._peer_max_frame:
            call.send_window -= size  # the usual: it fits, one frame with END_STREAM
            self._send_window -= size
            self._write(head + h2.frame(h2.DATA, h2.END_STREAM, call.id, data))
        else:
            call.pending += data
            call.end_pending = True
            self._flush_stream(call, head)
        return call

    def send(self, call: _Call, message: bytes) -> None:
        """Send one request message (length-prefixed)."""
        if call.done:
            return
        self._queue_message(call, message)

    def end(self, call: _Call) -> None:
        """Half-close the call: no more request messages."""
        if not call.done:
            call.end_pending = True
            self._flush_stream(call)

    def consumed(self, call: _Call) -> None:
        """A stream's queued answers were read: let the instance send more."""
        if not call.done:
            self._stream_consumed(call, call.unread)
        call.unread = 0

    def cancel(self, call: _Call) -> None:
        """Nobody waits for the call any more: reset it (the instance cancels it); its
        receiver is not called."""
        if self._calls.pop(call.id, None) is not None:
            self._write(h2.rst_stream(call.id, h2.CANCEL))
        call.done = True
        call.receiver = None
        self._unblock(call.id)
        self._check_drained()

    def _drained(self, call: _Call) -> None:
        if call.end_pending:  # the request is all sent: half-close
            call.end_pending = False
            self._write(h2.frame(h2.DATA, h2.END_STREAM, call.id))
        if call.writable is not None:
            call.writable.set()

    def _end(self, call: _Call, outcome: BaseException | None) -> None:
        """Deliver a finished call's outcome (None: OK)."""
        call.done = True
        self._unblock(call.id)
        if call.writable is not None:
            call.writable.set()
        if call.queue is not None:
            call.queue.put_nowait(outcome)
        elif call.receiver is not None:
            receiver, call.receiver = call.receiver, None  # once
            receiver.upstream_done(_unary_outcome(call, outcome))
        elif call.future is not None and not call.future.done():
            result = _unary_outcome(call, outcome)
            if isinstance(result, BaseException):
                call.future.set_exception(result)
            else:
                call.future.set_result(result)
        self._check_drained()

    def _reset(self, call: _Call, error: BaseException) -> None:
        self._calls.pop(call.id, None)
        self._write(h2.rst_stream(call.id, h2.CANCEL))
        self._end(call, error)

    def _check_drained(self) -> None:
        """Close a connection that takes no new calls once its last call is over."""
        if self._room_waiters:
            self._wake_room()
        if self.closed and not self._calls:
            self._close_transport()

    def has_room(self) -> bool:
        """Whether a new call stays within the instance's SETTINGS_MAX_CONCURRENT_STREAMS."""
        return len(self._calls) < self._peer_max_streams

    def room(self) -> asyncio.Future[None]:
        """Done once a call ended (or the connection did): look at :meth:`has_room` again."""
        future: asyncio.Future[None] = self._loop.create_future()
        self._room_waiters.append(future)
        return future

    def _wake_room(self) -> None:
        if self.has_room() or not self.usable():
            waiters, self._room_waiters = self._room_waiters, []
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    def _fail(self, code: int, message: str) -> None:
        """The instance broke HTTP/2: tell it (GOAWAY), close, fail the calls."""
        self._write(h2.goaway(0, code, message.encode()[:256]))
        self.closed = True
        self._close_transport()
        self.connection_lost(None)

    def usable(self) -> bool:
        return not self.closed and self._transport is not None

    def busy(self) -> bool:
        return bool(self._calls)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()


def _unary_outcome(call: _Call, outcome: BaseException | None) -> bytes | BaseException:
    """A finished unary call's answer, or its error."""
    if outcome is not None:
        return outcome
    if len(call.messages) == 1:
        return call.messages[0]
    return GrpcError(
        grpc.StatusCode.INTERNAL, f"the instance sent {len(call.messages)} messages to a unary call"
    )


def _status(headers: Headers) -> GrpcError | None:
    """The outcome of a call from its trailers (None: OK)."""
    code = -1
    message = ""
    extra: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name == b"grpc-status":
            code = int(value) if value.isdigit() else -1
        elif name == b"grpc-message":
            message = unquote(value.decode("ascii", "replace"))
        elif not name.startswith((b":", b"grpc-")) and name != b"content-type":
            extra.append((name, value))
    if code == 0:
        return None
    status = _CODES.get(code, grpc.StatusCode.UNKNOWN)
    if code < 0:
        message = message or "the instance sent no grpc-status"
    return GrpcError(status, message, extra)


class GrpcUpstream:
    """gRPC calls to one instance, on one HTTP/2 connection (opened again when lost)."""

    def __init__(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop,
        token: str | None = None,
        unix_socket: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.loop = loop
        #: the instance's gRPC Unix socket (named after its HTTP one), tried before the
        #: TCP port; None once it could not be reached (an instance that has none)
        self.unix_socket = grpc_unix_socket(unix_socket) if unix_socket else None
        self._extra = h2.encode_header(instance_token.HEADER, token.encode()) if token else b""
        self._conn: GrpcConnection | None = None
        self._connecting: asyncio.Task[GrpcConnection] | None = None

    async def _connection(self) -> GrpcConnection:
        conn = self._conn
        if conn is not None and conn.usable():
            return conn
        task = self._connecting
        if task is None:
            task = self._connecting = self.loop.create_task(self._open())
            task.add_done_callback(lambda _: setattr(self, "_connecting", None))
        return await asyncio.shield(task)

    async def _open(self) -> GrpcConnection:
        authority = b"%s:%d" % (self.host.encode(), self.port)

        def protocol() -> GrpcConnection:
            return GrpcConnection(authority, self._extra)

        conn: GrpcConnection | None = None
        if self.unix_socket is not None:
            try:
                _, conn = await asyncio.wait_for(
                    connect_unix(self.loop, protocol, self.unix_socket),
                    CONNECT_TIMEOUT_S,
                )
            except (OSError, TimeoutError) as exc:  # e.g. an instance of an older version
                log.debug("gRPC over %s: %s; using TCP", self.unix_socket, exc)
                self.unix_socket = None
        if conn is None:
            try:
                _, conn = await asyncio.wait_for(
                    self.loop.create_connection(protocol, self.host, self.port),
                    CONNECT_TIMEOUT_S,
                )
            except (OSError, TimeoutError) as exc:
                raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        assert conn is not None
        self._conn = conn
        return conn

    def ready(self) -> GrpcConnection | None:
        """The connection, when a call can start on it at once (open, below the
        instance's stream limit); else None (the caller takes :meth:`unary`'s path)."""
        conn = self._conn
        if conn is not None and conn.usable() and conn.has_room():
            return conn
        return None

    async def unary(
        self, path: bytes, message: bytes, metadata: Headers, deadline: Deadline
    ) -> bytes:
        """One unary call; its answer.

        ConnectFailed when the instance could not be reached or refused the call (it
        was not run: safe to retry elsewhere), UpstreamClosed when the connection broke
        under it, GrpcError for the instance's own non-OK status, Expired when
        ``deadline`` passed first (the call is then reset).
        """
        conn = self._conn
        if conn is None or not conn.usable():
            conn = await self._connection()
        while not conn.has_room():  # the instance's stream limit: wait for a call to end
            await deadline.wait(conn.room())
            if not conn.usable():
                conn = await self._connection()
        call = conn.open(path, metadata, streaming=False, message=message)
        assert call.future is not None
        try:
            answer = await deadline.wait(call.future)  # type: ignore[arg-type]
        except BaseException:
            conn.cancel(call)
            raise
        assert answer is not None
        return answer

    async def stream(
        self, path: bytes, requests: AsyncIterator[bytes], metadata: Headers
    ) -> AsyncIterator[bytes]:
        """A streaming call: ``requests`` go out as they come, answers are yielded."""
        conn = await self._connection()
        while not conn.has_room():
            await conn.room()
            if not conn.usable():
                conn = await self._connection()
        call = conn.open(path, metadata, streaming=True)
        assert call.queue is not None
        call.writable = asyncio.Event()
        call.writable.set()
        pump = self.loop.create_task(self._pump(conn, call, requests))
        try:
            while (item := await call.queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                if call.unread and call.queue.empty():
                    conn.consumed(call)
                yield item
        finally:
            pump.cancel()
            if not call.done:
                conn.cancel(call)

    @staticmethod
    async def _pump(conn: GrpcConnection, call: _Call, requests: AsyncIterator[bytes]) -> None:
        """Send the request messages as they come, waiting while the window is full."""
        writable = call.writable
        assert writable is not None and call.queue is not None
        try:
            async for message in requests:
                if call.done:
                    return
                conn.send(call, message)
                if len(call.pending) >= STREAM_BUFFER:
                    writable.clear()
                    await writable.wait()
        except Exception as exc:  # the client's side of the stream broke
            conn.cancel(call)
            call.queue.put_nowait(UpstreamClosed(f"the request stream failed: {exc}"))
            return
        conn.end(call)

    def idle(self) -> bool:
        """No call in progress."""
        return self._conn is None or not self._conn.busy()

    def close(self) -> None:
        """Close the connection (calls in progress fail with UpstreamClosed)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
