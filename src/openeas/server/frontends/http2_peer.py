"""What both ends of a gRPC HTTP/2 connection do alike: writes, flow control, SETTINGS.

The processor's server connection
(:class:`~openeas.server.frontends.grpc_transport.Http2Connection`) and the gateway's
client connection to an instance (:mod:`openeas.gateway.grpc_upstream`) differ in who
opens streams and what a stream carries; they share, from here: writes gathered per
loop iteration (several calls' frames in one ``send``), the peer's SETTINGS (initial
stream window and frame size, acknowledged), WINDOW_UPDATE, sending each stream's
pending DATA as both windows allow (the rest waits for window), and acknowledging what
was received once half of a window is used.  Frame parsing and HPACK are the sans-IO
helpers of :mod:`openeas.protocol.http2`.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

from openeas.protocol import http2 as h2

#: A stream's sender waits while this much of its DATA waits for the peer's window.
STREAM_BUFFER = 1024 * 1024


class FlowStream(Protocol):
    """What flow control needs of a stream."""

    id: int
    send_window: int  # what the peer lets us send on it
    pending: bytearray  # DATA payload waiting for window
    recv_unacked: int  # received since our last WINDOW_UPDATE for it


class Http2Peer(asyncio.Protocol, abc.ABC):
    """Writes and flow control of one HTTP/2 connection (see the module docstring).

    A subclass sets ``stream_window`` and ``connection_window`` (what it advertises),
    implements :meth:`_stream` and :meth:`_open_streams`, and may override
    :meth:`_drained`, called when a stream's pending DATA has all been sent.
    """

    stream_window: int
    connection_window: int

    def __init__(self, max_header_list_size: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()  # received bytes not yet cut into frames
        self._out: list[bytes] = []  # written at the end of the loop iteration
        self._decoder = h2.HeaderDecoder(max_header_list_size)
        self._continuation: tuple[int, int, bytearray] | None = None
        self._peer_window = h2.DEFAULT_WINDOW  # initial send window of new streams
        self._peer_max_frame = h2.DEFAULT_MAX_FRAME
        self._send_window = h2.DEFAULT_WINDOW  # connection-level send window
        self._recv_unacked = 0
        self._blocked: dict[int, Any] = {}  # streams with DATA waiting for window

    # -- for subclasses ----------------------------------------------------------------

    @abc.abstractmethod
    def _stream(self, stream_id: int) -> FlowStream | None:
        """The open stream ``stream_id``, if any."""

    @abc.abstractmethod
    def _open_streams(self) -> Iterable[FlowStream]:
        """Every open stream."""

    def _drained(self, stream: Any) -> None:
        """All of ``stream``'s pending DATA is sent (what may follow it, may go)."""

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
        if pending:
            self._blocked[stream.id] = stream
            return
        self._blocked.pop(stream.id, None)
        self._drained(stream)

    def _flush_blocked(self) -> None:
        for stream in list(self._blocked.values()):
            if self._send_window <= 0:
                return
            self._flush_stream(stream)

    # -- frames both ends handle alike -------------------------------------------------

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise h2.ProtocolError("SETTINGS on a stream")
        if flags & h2.ACK:
            return
        for key, value in h2.parse_settings(payload):
            if key == h2.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > h2.MAX_WINDOW:
                    raise h2.ProtocolError("initial window too large", h2.FLOW_CONTROL_ERROR)
                delta = value - self._peer_window
                self._peer_window = value
                for stream in self._open_streams():
                    stream.send_window += delta
            elif key == h2.SETTINGS_MAX_FRAME_SIZE:
                if not h2.DEFAULT_MAX_FRAME <= value <= h2.MAX_FRAME_LIMIT:
                    raise h2.ProtocolError("bad SETTINGS_MAX_FRAME_SIZE")
                self._peer_max_frame = value
        self._write(h2.frame(h2.SETTINGS, h2.ACK, 0))
        self._flush_blocked()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise h2.ProtocolError("bad WINDOW_UPDATE frame", h2.FRAME_SIZE_ERROR)
        increment = h2.read_u31(payload)
        if stream_id == 0:
            self._send_window += increment
            if self._send_window > h2.MAX_WINDOW:
                raise h2.ProtocolError("connection window overflow", h2.FLOW_CONTROL_ERROR)
            self._flush_blocked()
        else:
            stream = self._stream(stream_id)
            if stream is not None:
                stream.send_window += increment
                self._flush_stream(stream)

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id or len(payload) != 8:
            raise h2.ProtocolError("bad PING frame", h2.FRAME_SIZE_ERROR)
        if not flags & h2.ACK:
            self._write(h2.frame(h2.PING, h2.ACK, 0, payload))

    def _received(self, size: int) -> None:
        """Count a DATA frame against our connection window (whatever its stream)."""
        self._recv_unacked += size
        if self._recv_unacked >= self.connection_window // 2:
            self._write(h2.window_update(0, self._recv_unacked))
            self._recv_unacked = 0

    def _stream_received(self, stream: FlowStream, size: int) -> None:
        """Count a DATA frame against ``stream``'s window (one that stays open)."""
        stream.recv_unacked += size
        if stream.recv_unacked >= self.stream_window // 2:
            self._write(h2.window_update(stream.id, stream.recv_unacked))
            stream.recv_unacked = 0
