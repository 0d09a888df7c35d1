"""What both ends of a gRPC HTTP/2 connection do alike: frames, writes, flow control.

The processor's server connection
(:class:`~openeas.transport.grpc_transport.Http2Connection`) and the gateway's
client connection to an instance (:mod:`openeas.gateway.grpc_upstream`) differ in who
opens streams and what a stream carries; they share, from here: the opening SETTINGS,
frames cut from the receive buffer and dispatched by type, writes gathered per loop
iteration (several calls' frames in one ``send``), the peer's SETTINGS (initial stream
window and frame size, acknowledged), WINDOW_UPDATE, sending each stream's pending DATA
as both windows allow (the rest waits for window), receive windows (a peer that sends
beyond them breaks the connection or the stream) acknowledged once half of a window is
consumed, header blocks split over CONTINUATION frames (bounded before they are
decoded), gRPC's length-prefixed messages cut out of a stream's DATA, and a cap on the
control frames (SETTINGS and PING acknowledgements) owed to a peer that does not read
them.  Frame parsing and HPACK are the sans-IO helpers of :mod:`openeas.protocol.http2`.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from openeas.protocol import http2 as h2

#: A stream's sender waits while this much of its DATA waits for the peer's window.
STREAM_BUFFER = 1024 * 1024
#: Our receive window per stream and per connection (bytes we let a peer send ahead).
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 64 * 1024 * 1024
#: Largest frame payload we accept (advertised in SETTINGS_MAX_FRAME_SIZE).
MAX_FRAME_SIZE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Http2Limits:
    """What one connection may cost us; docs/architecture.md lists each with its flag."""

    #: SETTINGS_MAX_CONCURRENT_STREAMS: streams beyond it are refused (REFUSED_STREAM).
    max_concurrent_streams: int = 256
    #: SETTINGS_MAX_HEADER_LIST_SIZE: longer header blocks are refused before decoding.
    max_header_list_size: int = 64 * 1024
    #: PINGs closer together than ``min_ping_interval_s`` while we send no data or
    #: headers are strikes; more strikes than this: GOAWAY ENHANCE_YOUR_CALM (0: any).
    max_ping_strikes: int = 2
    min_ping_interval_s: float = 300.0
    #: Without calls in flight pings closer than 2 hours are strikes, unless this.
    ping_without_calls: bool = False
    #: Resets of open streams by the peer (and stream errors it caused): a burst of
    #: ``reset_burst``, then ``reset_rate`` a second (nghttp2's rapid-reset defaults).
    reset_burst: int = 1000
    reset_rate: float = 33.0
    #: Control frames we may owe a peer whose reads lag (nghttp2's max_outbound_ack).
    max_owed_acks: int = 1000
    #: Entries in one SETTINGS frame (nghttp2's max_settings).
    max_settings: int = 32
    #: Answers waiting for a peer's flow-control window beyond this: new streams are
    #: refused (REFUSED_STREAM) until it reads some (a zero-window stall).
    max_stalled_bytes: int = 16 * 1024 * 1024


class FlowStream(Protocol):
    """What flow control and message framing need of a stream."""

    id: int
    send_window: int  # what the peer lets us send on it
    pending: bytearray  # DATA payload waiting for window
    recv_window: int  # what the peer may still send on it
    recv_unacked: int  # consumed since our last WINDOW_UPDATE for it
    recv: bytearray  # the start of a message that arrives in pieces
    done: bool  # over: nothing more is taken from its DATA


class Http2Peer(asyncio.Protocol, abc.ABC):
    """Writes and flow control of one HTTP/2 connection (see the module docstring).

    A subclass implements the stream table (:meth:`_stream`, :meth:`_open_streams`,
    :meth:`_is_idle`), the frames whose meaning differs by side (:meth:`_on_data`,
    :meth:`_header_block`, :meth:`_on_rst_stream`, :meth:`_on_goaway`, and may override
    :meth:`_on_priority` and :meth:`_on_push_promise`), :meth:`_stream_error`, and what
    a stream's messages become (:meth:`_message`, :meth:`_compressed`); it may override
    :meth:`_drained`, called when a stream's pending DATA has all been sent.
    """

    #: What we advertise: our receive windows and largest frame.
    stream_window = STREAM_WINDOW
    connection_window = CONNECTION_WINDOW
    max_frame_size = MAX_FRAME_SIZE
    #: Whether the peer opens the streams (we are the server): its HEADERS must then be
    #: on odd (client-initiated) streams.
    peer_opens_streams = False
    #: Longest gRPC message accepted (its length prefix is checked before it is buffered).
    max_message_size = 2**32

    def __init__(self, limits: Http2Limits) -> None:
        self._loop = asyncio.get_running_loop()
        self.limits = limits
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()  # received bytes not yet cut into frames
        self._out: list[bytes] = []  # written at the end of the loop iteration
        self._decoder = h2.HeaderDecoder(limits.max_header_list_size)
        #: a header block in CONTINUATION frames
        self._blocks = h2.HeaderBlockAssembler(
            self._decoder, max(8, limits.max_header_list_size // 1024)
        )
        self._peer_window = h2.DEFAULT_WINDOW  # initial send window of new streams
        self._peer_max_frame = h2.DEFAULT_MAX_FRAME
        self._peer_max_streams = h2.MAX_WINDOW  # SETTINGS_MAX_CONCURRENT_STREAMS: unlimited
        self._send_window = h2.DEFAULT_WINDOW  # connection-level send window
        self._recv_window = self.connection_window  # what the peer may still send
        self._recv_unacked = 0  # consumed since our last WINDOW_UPDATE
        #: streams with DATA waiting for window, with how much waits
        self._blocked: dict[int, tuple[Any, int]] = {}
        self._blocked_bytes = 0  # all of it
        self._writing_paused = False
        self._owed_acks = 0  # control frames answered since the peer last kept up

    # -- for subclasses ----------------------------------------------------------------

    @abc.abstractmethod
    def _stream(self, stream_id: int) -> FlowStream | None:
        """The open stream ``stream_id``, if any."""

    @abc.abstractmethod
    def _open_streams(self) -> Iterable[FlowStream]:
        """Every open stream."""

    @abc.abstractmethod
    def _is_idle(self, stream_id: int) -> bool:
        """Whether ``stream_id`` was never opened (RFC 9113 5.1's "idle")."""

    @abc.abstractmethod
    def _stream_error(self, stream: Any, code: int) -> None:
        """The peer broke ``stream`` (not the connection): reset it with ``code``."""

    @abc.abstractmethod
    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        """A complete header block arrived on ``stream_id`` (``flags`` of its HEADERS)."""

    @abc.abstractmethod
    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        """A DATA frame."""

    @abc.abstractmethod
    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        """An RST_STREAM frame."""

    @abc.abstractmethod
    def _on_goaway(self, stream_id: int, payload: bytes) -> None:
        """A GOAWAY frame."""

    def _on_priority(self, stream_id: int, payload: bytes) -> None:
        """A PRIORITY frame (advice only: ignored unless a subclass checks it)."""

    def _on_push_promise(self, stream_id: int) -> None:
        """A PUSH_PROMISE frame (ignored unless a subclass refuses it)."""

    @abc.abstractmethod
    def _message(self, stream: Any, message: bytes) -> None:
        """A complete request or answer message arrived on ``stream``."""

    @abc.abstractmethod
    def _compressed(self, stream: Any, message: bytes) -> bytes | None:
        """A message with the compressed flag: inflated, or None (the stream ended)."""

    def _too_large(self, stream: Any, length: int) -> None:
        """A message longer than :attr:`max_message_size` is arriving on ``stream``."""

    def _drained(self, stream: Any) -> None:
        """All of ``stream``'s pending DATA is sent (what may follow it, may go)."""

    # -- reading -----------------------------------------------------------------------

    def _settings(self, extra: dict[int, int]) -> bytes:
        """Our SETTINGS (``extra`` and our windows and limits), then the connection
        window beyond HTTP/2's default: what each end sends first."""
        settings = {
            **extra,
            h2.SETTINGS_INITIAL_WINDOW_SIZE: self.stream_window,
            h2.SETTINGS_MAX_FRAME_SIZE: self.max_frame_size,
            h2.SETTINGS_MAX_HEADER_LIST_SIZE: self.limits.max_header_list_size,
        }
        return h2.settings_frame(settings) + h2.window_update(
            0, self.connection_window - h2.DEFAULT_WINDOW
        )

    def _take_frames(self) -> None:
        """Handle every complete frame in the receive buffer, until the connection ends;
        h2.ProtocolError when the peer broke HTTP/2."""
        for kind, flags, stream_id, payload in h2.take_frames(self._buf, self.max_frame_size):
            self._frame(kind, flags, stream_id, payload)
            if self._transport is None:
                return

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._blocks.stream_id is not None and kind != h2.CONTINUATION:
            raise h2.ProtocolError("expected a CONTINUATION frame")
        if kind == h2.DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == h2.HEADERS or kind == h2.CONTINUATION:
            self._on_header_frame(kind, flags, stream_id, payload)
        elif kind == h2.WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == h2.SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == h2.PING:
            self._on_ping(flags, stream_id, payload)
        elif kind == h2.RST_STREAM:
            self._on_rst_stream(stream_id, payload)
        elif kind == h2.GOAWAY:
            self._on_goaway(stream_id, payload)
        elif kind == h2.PUSH_PROMISE:
            self._on_push_promise(stream_id)
        elif kind == h2.PRIORITY:
            self._on_priority(stream_id, payload)
        # unknown frame types are ignored, as RFC 9113 asks

    def _take_messages(self, stream: FlowStream, data: bytes) -> None:
        """Cut complete length-prefixed gRPC messages out of ``stream``'s received bytes
        (each to :meth:`_message`); a length beyond :attr:`max_message_size` ends the
        stream (:meth:`_too_large`) before the message is buffered."""
        recv = stream.recv
        if not recv and len(data) >= h2.MESSAGE_HEADER_SIZE:  # the usual: one whole message
            flag, length = h2.MESSAGE_HEADER.unpack_from(data)
            if len(data) == length + h2.MESSAGE_HEADER_SIZE and not flag:
                if length > self.max_message_size:
                    self._too_large(stream, length)
                else:
                    self._message(stream, data[h2.MESSAGE_HEADER_SIZE :])
                return
        recv += data
        while len(recv) >= h2.MESSAGE_HEADER_SIZE:
            flag, length = h2.MESSAGE_HEADER.unpack_from(recv)
            if length > self.max_message_size:
                self._too_large(stream, length)
                return
            total = length + h2.MESSAGE_HEADER_SIZE
            if len(recv) < total:
                return
            message = bytes(recv[h2.MESSAGE_HEADER_SIZE : total])
            del recv[:total]
            if flag:
                inflated = self._compressed(stream, message)
                if inflated is None:
                    return
                message = inflated
            self._message(stream, message)
            if stream.done:
                return

    # -- writing -----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Queue ``data``; everything queued in one loop iteration goes out in one write.

        Several calls share a connection, and their frames are often ready in the same
        iteration: one ``send`` for all of them instead of one each (on loopback the
        system call is the largest cost of a small call).
        """
        if self._transport is None:
            return
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self._transport is not None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))
            if not self._writing_paused:
                self._owed_acks = 0  # the peer reads what we send: nothing piles up

    def _close_transport(self) -> None:
        """Send what is queued, then close."""
        if self._transport is not None:
            self._flush()
            self._transport.close()

    def _queue_message(self, stream: FlowStream, payload: bytes) -> None:
        """Send one length-prefixed gRPC message on ``stream`` as the windows allow."""
        stream.pending += h2.MESSAGE_HEADER.pack(0, len(payload))
        stream.pending += payload
        self._flush_stream(stream)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False

    def _ack(self, frame: bytes) -> None:
        """Answer a control frame; ENHANCE_YOUR_CALM when the peer keeps sending them
        without reading the answers (a PING or SETTINGS flood)."""
        self._owed_acks += 1
        if self._owed_acks > self.limits.max_owed_acks:
            raise h2.ProtocolError("too many control frames not read", h2.ENHANCE_YOUR_CALM)
        self._write(frame)

    def _flush_stream(self, stream: Any, head: bytes = b"") -> None:
        """Send ``head`` and as much of ``stream``'s pending DATA as the windows allow."""
        pending = stream.pending
        out = [head] if head else []
        while pending:
            size = min(len(pending), stream.send_window, self._send_window, self._peer_max_frame)
            if size <= 0:
                break
            out.append(h2.frame(h2.DATA, 0, stream.id, bytes(pending[:size])))
            del pending[:size]
            stream.send_window -= size
            self._send_window -= size
        if out:
            self._write(b"".join(out))
        self._unblock(stream.id)
        if pending:
            self._blocked[stream.id] = (stream, len(pending))
            self._blocked_bytes += len(pending)
            return
        self._drained(stream)

    def _unblock(self, stream_id: int) -> None:
        """``stream_id`` waits for window no more (sent, or gone)."""
        entry = self._blocked.pop(stream_id, None)
        if entry is not None:
            self._blocked_bytes -= entry[1]

    def _flush_blocked(self) -> None:
        for stream, _ in list(self._blocked.values()):
            if self._send_window <= 0:
                return
            self._flush_stream(stream)

    # -- frames both ends handle alike -------------------------------------------------

    def _on_header_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        """HEADERS and CONTINUATION: gather the block (bounded), then
        :meth:`_header_block`."""
        if kind == h2.HEADERS:
            if self.peer_opens_streams and (stream_id == 0 or not stream_id & 1):
                raise h2.ProtocolError(f"HEADERS on stream {stream_id}")
            if flags & h2.END_HEADERS:  # the usual: the whole block in one frame
                self._header_block(stream_id, flags, h2.header_fragment(flags, payload))
            else:
                self._blocks.start(stream_id, flags, h2.header_fragment(flags, payload))
            return
        block = self._blocks.add(stream_id, flags, payload)
        if block is not None:
            self._header_block(stream_id, self._blocks.flags, block)

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise h2.ProtocolError("SETTINGS on a stream")
        if flags & h2.ACK:
            if payload:
                raise h2.ProtocolError("SETTINGS ACK with a payload", h2.FRAME_SIZE_ERROR)
            return
        settings = h2.parse_settings(payload)
        if len(settings) > self.limits.max_settings:
            raise h2.ProtocolError("too many SETTINGS entries", h2.ENHANCE_YOUR_CALM)
        for key, value in settings:
            if key == h2.SETTINGS_INITIAL_WINDOW_SIZE:
                self._set_peer_window(value)
            elif key == h2.SETTINGS_MAX_FRAME_SIZE:
                if not h2.DEFAULT_MAX_FRAME <= value <= h2.MAX_FRAME_LIMIT:
                    raise h2.ProtocolError("bad SETTINGS_MAX_FRAME_SIZE")
                self._peer_max_frame = value
            elif key == h2.SETTINGS_MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = value
            elif key == h2.SETTINGS_ENABLE_PUSH and value > 1:
                raise h2.ProtocolError("bad SETTINGS_ENABLE_PUSH")
        self._ack(h2.frame(h2.SETTINGS, h2.ACK, 0))
        self._flush_blocked()

    def _set_peer_window(self, value: int) -> None:
        if value > h2.MAX_WINDOW:
            raise h2.ProtocolError("initial window too large", h2.FLOW_CONTROL_ERROR)
        delta = value - self._peer_window
        self._peer_window = value
        for stream in self._open_streams():
            stream.send_window += delta
            if stream.send_window > h2.MAX_WINDOW:  # RFC 9113 6.9.2: a connection error
                raise h2.ProtocolError("stream window overflow", h2.FLOW_CONTROL_ERROR)

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise h2.ProtocolError("bad WINDOW_UPDATE frame", h2.FRAME_SIZE_ERROR)
        increment = h2.read_u31(payload)
        if stream_id == 0:
            if not increment:
                raise h2.ProtocolError("WINDOW_UPDATE of 0 on the connection")
            self._send_window += increment
            if self._send_window > h2.MAX_WINDOW:
                raise h2.ProtocolError("connection window overflow", h2.FLOW_CONTROL_ERROR)
            self._flush_blocked()
            return
        stream = self._stream(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise h2.ProtocolError(f"WINDOW_UPDATE on idle stream {stream_id}")
            return  # a stream that closed meanwhile
        if not increment:
            self._stream_error(stream, h2.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > h2.MAX_WINDOW:
            self._stream_error(stream, h2.FLOW_CONTROL_ERROR)
            return
        self._flush_stream(stream)

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise h2.ProtocolError("PING on a stream")
        if len(payload) != 8:
            raise h2.ProtocolError("bad PING frame", h2.FRAME_SIZE_ERROR)
        if not flags & h2.ACK:
            self._ack(h2.frame(h2.PING, h2.ACK, 0, payload))

    # -- receive windows ---------------------------------------------------------------

    def _received(self, size: int, hold: bool = False) -> None:
        """Count a DATA frame against our connection window (whatever its stream); it is
        consumed at once unless ``hold`` (then :meth:`_consumed` later)."""
        window = self._recv_window - size
        if window < 0:
            raise h2.ProtocolError("DATA beyond the connection window", h2.FLOW_CONTROL_ERROR)
        self._recv_window = window
        if not hold:  # :meth:`_consumed`, inline: this runs for every DATA frame
            unacked = self._recv_unacked + size
            if unacked >= self.connection_window // 2:
                self._write(h2.window_update(0, unacked))
                self._recv_window = window + unacked
                unacked = 0
            self._recv_unacked = unacked

    def _consumed(self, size: int) -> None:
        """``size`` received bytes are consumed: let the peer send more once half of the
        connection window is."""
        self._recv_unacked += size
        if self._recv_unacked >= self.connection_window // 2:
            self._write(h2.window_update(0, self._recv_unacked))
            self._recv_window += self._recv_unacked
            self._recv_unacked = 0

    def _stream_received(self, stream: FlowStream, size: int) -> bool:
        """Count a DATA frame against ``stream``'s window; False (and the stream reset
        with FLOW_CONTROL_ERROR) when the peer sent beyond it."""
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._stream_error(stream, h2.FLOW_CONTROL_ERROR)
            return False
        return True

    def _stream_consumed(self, stream: FlowStream, size: int) -> None:
        """``size`` bytes of ``stream`` (one that stays open) are consumed."""
        stream.recv_unacked += size
        if stream.recv_unacked >= self.stream_window // 2:
            self._write(h2.window_update(stream.id, stream.recv_unacked))
            stream.recv_window += stream.recv_unacked
            stream.recv_unacked = 0
