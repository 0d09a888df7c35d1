"""gRPC over HTTP/2 on the running asyncio loop: the transport of the gRPC front end.

Why our own and not grpcio's server: grpcio's asyncio integration costs about 250 us of
the GIL-holding loop thread per call on this machine (benchmarks/README.md), far more
than the model.  A call here is what the HTTP front end does: parse frames from the
socket buffer, look the method up in a dict, decode the protobuf message, await the data
plane, and write the response headers, message and trailers with one ``transport.write``.

What it implements (RFC 9113 and gRPC's PROTOCOL-HTTP2): the connection preface and
SETTINGS exchange, HPACK (decoding with the ``hpack`` library, see
:class:`~openeas.protocol.http2.HeaderDecoder`), CONTINUATION, padding, flow control in
both directions (large messages are split by the peer's window and frame size), PING,
RST_STREAM (cancels the call), GOAWAY both ways with graceful drain, ``grpc-timeout``
deadlines, gzip/deflate request messages, message size limits (RESOURCE_EXHAUSTED),
unary, server-streaming and bidirectional-streaming methods, and TLS (with ALPN ``h2``)
when given an SSL context.  It does not do server push or response compression (both
optional in gRPC).

This module is the connection: frames in (over :class:`~openeas.transport.http2_peer.
Http2Peer`, which the gateway's client shares), calls opened, run and answered.  A call's
state is a :class:`~openeas.transport.grpc_stream.CallStream`; what a service gives and
raises (:class:`~openeas.transport.grpc_call.Method`, :class:`~openeas.transport.grpc_call.
GrpcError`) and how a status is said on the wire is :mod:`openeas.transport.grpc_call`.

Hostile peers meet the limits of :class:`~openeas.transport.http2_peer.Http2Limits`
(concurrent streams, header list size, ping strikes, stream resets, owed control
frames) and RFC 9113's rules for malformed frames (docs/architecture.md lists both); a
client that does not read its answers stops being read (``pause_writing``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import grpc

from openeas.protocol import http2 as h2
from openeas.protocol import instance_token
from openeas.transport.grpc_call import (
    NO_METHOD,
    OK,
    PERMISSION_DENIED,
    RESOURCE_EXHAUSTED,
    RESPONSE_HEADERS,
    TRAILERS_OK,
    UNAVAILABLE,
    UNIMPLEMENTED,
    GrpcError,
    Headers,
    Method,
    status_fields,
)
from openeas.transport.grpc_handlers import CallRunner
from openeas.transport.grpc_stream import CallStream, wake
from openeas.transport.http2_peer import Http2Limits, Http2Peer
from openeas.transport.sockets import set_nodelay

log = logging.getLogger(__name__)

#: Pings closer than this without calls in flight are strikes (gRPC core's rule).
_IDLE_PING_INTERVAL_S = 2 * 3600.0
#: No ping seen since we last sent data or headers: (last ping time, strikes).
_PING_RESET: tuple[float, int] = (-math.inf, 0)


class Http2Connection(CallRunner, Http2Peer):
    """One client connection: HTTP/2 framing, flow control and the calls on it (their
    handlers run by :class:`~openeas.transport.grpc_handlers.CallRunner`)."""

    peer_opens_streams = True

    def __init__(self, server: GrpcServer) -> None:
        super().__init__(server.limits)
        self.server = server
        self.methods = server.methods
        self.max_message_size = server.max_message_size
        self._preface_seen = False
        self._streams: dict[int, CallStream] = {}
        self._last_stream_id = 0
        self._draining = False
        self._ping_state = _PING_RESET
        self._reset_tokens = float(self.limits.reset_burst)
        self._reset_clock = self._loop.time()
        self.idle = asyncio.Event()
        self.idle.set()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is duck-typed
        set_nodelay(transport)
        self.server.connections.add(self)
        self._write(
            self._settings({h2.SETTINGS_MAX_CONCURRENT_STREAMS: self.limits.max_concurrent_streams})
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.server.connections.discard(self)
        for stream in list(self._streams.values()):
            self._abandon(stream)
        self._streams.clear()
        self.idle.set()

    def pause_writing(self) -> None:
        """The client does not read what we send: stop reading what it sends (its new
        calls, pings and settings would only pile up more answers)."""
        super().pause_writing()
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        try:
            if not self._preface_seen:
                if len(buf) < len(h2.PREFACE):
                    if not h2.PREFACE.startswith(bytes(buf)):
                        raise h2.ProtocolError("not an HTTP/2 connection preface")
                    return
                if buf[: len(h2.PREFACE)] != h2.PREFACE:
                    raise h2.ProtocolError("not an HTTP/2 connection preface")
                del buf[: len(h2.PREFACE)]
                self._preface_seen = True
            self._take_frames()
        except h2.ProtocolError as exc:
            log.info("gRPC connection error: %s", exc)
            self._fail_connection(exc.code, str(exc))
        except Exception:
            log.exception("gRPC connection failed")
            self._fail_connection(h2.INTERNAL_ERROR, "internal error")

    # -- frames ----------------------------------------------------------------------------

    def _on_goaway(self, stream_id: int, payload: bytes) -> None:
        if stream_id or len(payload) < 8:
            raise h2.ProtocolError("bad GOAWAY frame", h2.FRAME_SIZE_ERROR)
        self._draining = True
        self._check_idle()

    def _on_push_promise(self, stream_id: int) -> None:
        raise h2.ProtocolError("a client must not send PUSH_PROMISE")

    def _on_priority(self, stream_id: int, payload: bytes) -> None:
        # its advice is ignored, as RFC 9113 allows; a malformed one is an error
        if stream_id == 0:
            raise h2.ProtocolError("PRIORITY on stream 0")
        if len(payload) != 5:
            raise h2.ProtocolError("bad PRIORITY frame", h2.FRAME_SIZE_ERROR)

    def _stream(self, stream_id: int) -> CallStream | None:
        return self._streams.get(stream_id)

    def _open_streams(self) -> Iterable[CallStream]:
        return self._streams.values()

    def _is_idle(self, stream_id: int) -> bool:
        # we never push, so every even (server-initiated) stream is idle
        return stream_id > self._last_stream_id or not stream_id & 1

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise h2.ProtocolError("bad RST_STREAM frame", h2.FRAME_SIZE_ERROR)
        if stream_id == 0 or self._is_idle(stream_id):
            raise h2.ProtocolError(f"RST_STREAM on idle stream {stream_id}")
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._abandon(stream)
            self._check_idle()
            self._count_reset()

    def _count_reset(self) -> None:
        """A token bucket over the streams the peer reset (or made us reset): opening
        calls and resetting them at once costs us work and costs the peer nothing (the
        rapid reset attack, CVE-2023-44487)."""
        limits = self.limits
        now = self._loop.time()
        tokens = min(
            float(limits.reset_burst),
            self._reset_tokens + (now - self._reset_clock) * limits.reset_rate,
        )
        self._reset_clock = now
        if tokens < 1:
            raise h2.ProtocolError("too many stream resets", h2.ENHANCE_YOUR_CALM)
        self._reset_tokens = tokens - 1

    def _stream_error(self, stream: CallStream, code: int) -> None:
        self._write(h2.rst_stream(stream.id, code))
        self._streams.pop(stream.id, None)
        self._abandon(stream)
        self._check_idle()
        self._count_reset()

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not flags & h2.ACK:
            self._ping_strike()
        super()._on_ping(flags, stream_id, payload)

    def _ping_strike(self) -> None:
        """gRPC's ping policy (Triton's ``--grpc-http2-*`` flags): a ping sooner than the
        allowed interval after the previous one, while we send no data or headers, is a
        strike; too many strikes: GOAWAY ENHANCE_YOUR_CALM ("too_many_pings")."""
        limits = self.limits
        if not limits.max_ping_strikes:
            return
        last, strikes = self._ping_state
        now = self._loop.time()
        if self._streams or limits.ping_without_calls:
            interval = limits.min_ping_interval_s
        else:
            interval = _IDLE_PING_INTERVAL_S
        if now < last + interval:
            strikes += 1
            if strikes > limits.max_ping_strikes:
                raise h2.ProtocolError("too_many_pings", h2.ENHANCE_YOUR_CALM)
        self._ping_state = (now, strikes)

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        try:
            headers = self._decoder.decode(block)  # always, to keep HPACK's table in step
        except h2.HeaderListTooLarge as exc:
            self._header_list_too_large(stream_id, exc)
            return
        stream = self._streams.get(stream_id)
        if stream is not None:  # trailers from the client end its half of the call
            if stream.remote_closed:
                self._stream_error(stream, h2.STREAM_CLOSED)
                return
            if not flags & h2.END_STREAM:
                raise h2.ProtocolError("trailers without END_STREAM")
            self._end_of_requests(stream)
            return
        if stream_id <= self._last_stream_id:
            # trailers of a call that is over are ignored; a new call on a lower id
            # than one already used is a connection error (RFC 9113 5.1.1)
            if any(name[:1] == b":" for name, _ in headers):
                raise h2.ProtocolError(f"stream {stream_id} is lower than one already used")
            return
        self._last_stream_id = stream_id
        if self._draining:
            self._write(h2.rst_stream(stream_id, h2.REFUSED_STREAM))
            return
        if (
            len(self._streams) >= self.limits.max_concurrent_streams
            or self._blocked_bytes > self.limits.max_stalled_bytes
        ):
            self._write(h2.rst_stream(stream_id, h2.REFUSED_STREAM))
            return
        self._open_stream(stream_id, headers, bool(flags & h2.END_STREAM))

    def _header_list_too_large(self, stream_id: int, exc: h2.HeaderListTooLarge) -> None:
        """HTTP's 431 as gRPC says it: the call ends with RESOURCE_EXHAUSTED."""
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id <= self._last_stream_id:
                return
            self._last_stream_id = stream_id
            stream = CallStream(stream_id, NO_METHOD, b"identity", self._peer_window)
            self._streams[stream_id] = stream
            self.idle.clear()
        self._finish(stream, RESOURCE_EXHAUSTED, str(exc))

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        size = len(payload)
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id == 0 or self._is_idle(stream_id):
                raise h2.ProtocolError(f"DATA on idle stream {stream_id}")
            self._received(size)
            if stream is not None:  # the client already ended its half (RFC 9113 6.1)
                self._stream_error(stream, h2.STREAM_CLOSED)
            return  # a closed or reset stream: only the connection window counts it
        if not self._stream_received(stream, size):
            self._received(size)
            return
        payload = h2.data_payload(flags, payload)
        end_stream = flags & h2.END_STREAM
        queue = stream.queue
        if queue is not None and not queue.empty():
            # a streaming handler has messages it has not read yet: hold the window
            # back until it has (:meth:`_release`), so a slow handler bounds the buffer
            self._received(size, hold=True)
            stream.unread += size
        else:
            self._received(size)
            if not end_stream:
                self._stream_consumed(stream, size)
        if payload and not stream.done:
            self._take_messages(stream, payload)
        if end_stream:
            self._end_of_requests(stream)

    def _release(self, stream: CallStream) -> None:
        """A streaming handler read every message it had: the held bytes are consumed."""
        unread, stream.unread = stream.unread, 0
        self._consumed(unread)
        if not stream.remote_closed and not stream.done:
            self._stream_consumed(stream, unread)

    # -- calls -----------------------------------------------------------------------------

    def _open_stream(self, stream_id: int, headers: Headers, end: bool) -> None:
        """A client's request headers: a new call, refused by HTTP status, ended with its
        gRPC status, or started."""
        method_name = b""
        verb = b""
        content_type = b""
        encoding = b"identity"
        timeout: float | None = None
        presented = b""
        for name, value in headers:
            if name == b":path":
                method_name = value
            elif name == b":method":
                verb = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-encoding":
                encoding = value
            elif name == b"grpc-timeout":
                timeout = h2.parse_timeout(value)
            elif name == instance_token.HEADER:
                presented = value
        if verb != b"POST":
            self._http_error(stream_id, b"405")
            return
        if not content_type.startswith(b"application/grpc"):
            self._http_error(stream_id, b"415")
            return
        method = self.methods.get(method_name)
        stream = CallStream(stream_id, method or NO_METHOD, encoding, self._peer_window)
        stream.remote_closed = end
        self._streams[stream_id] = stream
        self.idle.clear()
        if method is None:
            self._finish(stream, UNIMPLEMENTED, f"Method not found: {method_name.decode()}")
            return
        if not self._refused(stream, presented) and self._admitted(stream, headers):
            self._start_call(stream, timeout, end)

    def _refused(self, stream: CallStream, presented: bytes) -> bool:
        """Refuse a call without the instance token, when this server requires one."""
        token = self.server.internal_token
        if token is None or hmac.compare_digest(presented, token):
            return False
        self._finish(stream, PERMISSION_DENIED, instance_token.REFUSED)
        return True

    def _abandon(self, stream: CallStream) -> None:
        """The peer is gone or reset the stream: cancel its work, send nothing more."""
        stream.done = True
        self._unblock(stream.id)
        wake(stream)
        if stream.timer is not None:
            stream.timer.cancel()
        if stream.task is not None:
            stream.task.cancel()
        if stream.queue is not None:
            stream.queue.put_nowait(None)
        self._forget_unread(stream)

    def _forget_unread(self, stream: CallStream) -> None:
        """A stream is over: what it held back of the connection window is free again."""
        if stream.unread:
            self._consumed(stream.unread)
            stream.unread = 0

    # -- sending ---------------------------------------------------------------------------

    def _respond(self, stream: CallStream, payload: bytes) -> None:
        """A unary call's answer: headers, the message and OK trailers in one write."""
        if stream.done:
            return
        if len(payload) > self.max_message_size:
            self._finish(
                stream,
                RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(payload)} vs. {self.max_message_size})",
            )
            return
        size = len(payload) + h2.MESSAGE_HEADER_SIZE
        if (
            not stream.headers_sent
            and size <= stream.send_window
            and size <= self._send_window
            and size <= self._peer_max_frame
        ):
            stream.send_window -= size
            self._send_window -= size
            self._ping_state = _PING_RESET  # we send data: pings are welcome again
            sid = stream.id
            self._write(
                h2.frame(h2.HEADERS, h2.END_HEADERS, sid, RESPONSE_HEADERS)
                + h2.frame(h2.DATA, 0, sid, h2.MESSAGE_HEADER.pack(0, len(payload)) + payload)
                + h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, sid, TRAILERS_OK)
            )
            self._close_stream(stream)  # after the write: closing may end a draining connection
            return
        self._send_message(stream, payload)
        self._finish(stream, OK, "")

    def _send_message(self, stream: CallStream, payload: bytes) -> None:
        if stream.done:
            return
        if len(payload) > self.max_message_size:
            raise GrpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(payload)} vs. {self.max_message_size})",
            )
        if not stream.headers_sent:
            stream.headers_sent = True
            self._write(h2.frame(h2.HEADERS, h2.END_HEADERS, stream.id, RESPONSE_HEADERS))
        self._ping_state = _PING_RESET
        self._queue_message(stream, payload)

    def _drained(self, stream: CallStream) -> None:
        wake(stream)
        if stream.pending_trailers is not None:  # sent once the DATA before it is
            trailers, stream.pending_trailers = stream.pending_trailers, None
            self._write(trailers)
            self._after_trailers(stream)

    def _finish(
        self, stream: CallStream, code: int, message: str, extra: Headers | tuple[()] = ()
    ) -> None:
        """End ``stream`` with status ``code`` and the ``extra`` trailing metadata
        (trailers, or trailers-only headers)."""
        if stream.done:
            return
        if stream.task is not None and code != OK and stream.task is not _current_task():
            stream.task.cancel()
        fields = status_fields(code, message, extra)
        flags = h2.END_HEADERS | h2.END_STREAM
        if not stream.headers_sent:
            stream.headers_sent = True
            trailers = h2.frame(h2.HEADERS, flags, stream.id, RESPONSE_HEADERS + fields)
        else:
            trailers = h2.frame(h2.HEADERS, flags, stream.id, fields)
        stream.done = True
        self._ping_state = _PING_RESET
        if stream.pending:
            stream.pending_trailers = trailers  # sent once the DATA before it is
            return
        self._write(trailers)
        self._after_trailers(stream)

    def _after_trailers(self, stream: CallStream) -> None:
        if not stream.remote_closed:
            # the client is still sending: tell it to stop (gRPC's PROTOCOL-HTTP2)
            self._write(h2.rst_stream(stream.id, h2.NO_ERROR))
        self._close_stream(stream)

    def _close_stream(self, stream: CallStream) -> None:
        stream.done = True
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        self._streams.pop(stream.id, None)
        self._forget_unread(stream)
        self._check_idle()

    def _http_error(self, stream_id: int, status: bytes) -> None:
        block = h2.encode_headers([(b":status", status)])
        self._write(h2.frame(h2.HEADERS, h2.END_HEADERS | h2.END_STREAM, stream_id, block))

    def _check_idle(self) -> None:
        if not self._streams:
            self.idle.set()
            if self._draining:
                self._close_transport()

    def _fail_connection(self, code: int, message: str) -> None:
        if self._transport is not None:
            self._write(h2.goaway(self._last_stream_id, code, message.encode()[:256]))
            self._close_transport()
            self._transport = None
        for stream in list(self._streams.values()):
            self._abandon(stream)
        self._streams.clear()
        self.idle.set()

    # -- shutdown --------------------------------------------------------------------------

    def drain(self) -> None:
        """Refuse new calls (GOAWAY) and close once the running ones are done."""
        if self._draining:
            return
        self._draining = True
        self._write(h2.goaway(self._last_stream_id, h2.NO_ERROR))
        self._check_idle()

    def close(self) -> None:
        """Cancel every call and close the connection now."""
        for stream in list(self._streams.values()):
            if not stream.done:
                self._finish(stream, UNAVAILABLE, "the server is shutting down")
            self._abandon(stream)
        self._streams.clear()
        self._close_transport()
        self.idle.set()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


class GrpcServer:
    """Serves ``methods`` (``b"/package.Service/Method"`` -> :class:`Method`) on a socket."""

    def __init__(
        self,
        methods: dict[bytes, Method],
        *,
        max_message_size: int,
        limits: Http2Limits = Http2Limits(),  # noqa: B008 - frozen
        internal_token: bytes | None = None,
    ) -> None:
        self.methods = methods
        self.max_message_size = max_message_size
        self.limits = limits
        #: a platform instance's token (see openeas.protocol.instance_token); None: open
        self.internal_token = internal_token
        self.connections: set[Http2Connection] = set()
        self._servers: list[asyncio.base_events.Server] = []

    async def start(self, sock: socket.socket, tls: ssl.SSLContext | None = None) -> None:
        """Accept connections on the listening ``sock`` (over TLS with ``tls``); called
        again, on one more socket (e.g. a Unix socket next to the TCP port)."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Http2Connection(self), sock=sock, ssl=tls)
        self._servers.append(server)

    async def stop(self, grace: float | None) -> None:
        """Stop accepting; running calls get ``grace`` seconds, then are cancelled."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        connections = list(self.connections)
        for connection in connections:
            connection.drain()
        if grace and connections:
            waits = [asyncio.ensure_future(c.idle.wait()) for c in connections]
            _, pending = await asyncio.wait(waits, timeout=grace)
            for wait in pending:
                wait.cancel()
        for connection in list(self.connections):
            connection.close()
