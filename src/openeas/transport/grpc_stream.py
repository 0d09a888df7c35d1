"""What the gRPC server transport keeps of one call (one HTTP/2 stream)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from openeas.transport.grpc_call import Method
from openeas.transport.http2_peer import STREAM_WINDOW


class Cancellable(Protocol):
    """What runs a call's handler: a task, or a fast path's reply handle."""

    def cancel(self) -> Any:
        """The call is over for the client (reset, deadline, connection gone)."""


class CallStream:
    """One call (HTTP/2 stream) on a connection."""

    __slots__ = (
        "id",
        "method",
        "encoding",
        "recv",
        "messages",
        "queue",
        "task",
        "timer",
        "send_window",
        "pending",
        "pending_trailers",
        "headers_sent",
        "remote_closed",
        "done",
        "recv_window",
        "recv_unacked",
        "unread",
        "headers",
        "drained",
    )

    def __init__(self, stream_id: int, method: Method, encoding: bytes, send_window: int):
        self.id = stream_id
        #: what the handler gets with its request: the headers, or what admit made of them
        self.headers: Any = None
        #: A streaming handler waiting for its pending answers to be sent.
        self.drained: asyncio.Future[None] | None = None
        self.method = method
        self.encoding = encoding
        self.recv = bytearray()
        self.messages: list[bytes] = []
        self.queue: asyncio.Queue[bytes | None] | None = None
        self.task: Cancellable | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.send_window = send_window
        self.pending = bytearray()  # DATA bytes waiting for flow-control window
        self.pending_trailers: bytes | None = None
        self.headers_sent = False
        self.remote_closed = False
        self.done = False
        self.recv_window = STREAM_WINDOW
        self.recv_unacked = 0
        #: received bytes held back from the window while the handler has messages
        #: waiting (a streaming call's back-pressure), on the stream and the connection
        self.unread = 0


def wake(stream: CallStream) -> None:
    """Let a streaming handler that waits for its answers to drain go on."""
    if stream.drained is not None and not stream.drained.done():
        stream.drained.set_result(None)
    stream.drained = None
