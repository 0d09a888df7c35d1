"""Running a call's handler: request messages in, the handler, answers out.

:class:`CallRunner` is the half of the server connection
(:class:`~openeas.transport.grpc_transport.Http2Connection`) that knows gRPC calls rather
than HTTP/2: which messages a call takes, when its handler starts (a unary call eagerly,
without a task when it completes at once), how a streaming handler's answers are paced
by the client's reading, and what status ends it.  The connection gives it the means to
answer (:meth:`CallRunner._respond`, :meth:`CallRunner._send_message`,
:meth:`CallRunner._finish`) and to let the client send more (:meth:`CallRunner._release`).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from openeas.protocol.compression import DecompressedTooLarge, DecompressionError, inflate
from openeas.protocol.compression import supported as inflate_supported
from openeas.transport.eager import start_eagerly
from openeas.transport.grpc_call import (
    DEADLINE_EXCEEDED,
    INTERNAL,
    OK,
    RESOURCE_EXHAUSTED,
    UNIMPLEMENTED,
    GrpcError,
    Headers,
    Kind,
    status_of,
)
from openeas.transport.grpc_stream import CallStream
from openeas.transport.http2_peer import STREAM_BUFFER


class CallRunner(abc.ABC):
    """The calls of one server connection (see the module docstring)."""

    _loop: asyncio.AbstractEventLoop
    #: Longest request message (after inflating); longer ones end the call.
    max_message_size: int

    @abc.abstractmethod
    def _respond(self, stream: CallStream, payload: bytes) -> None:
        """A unary call's answer message, then OK."""

    @abc.abstractmethod
    def _send_message(self, stream: CallStream, payload: bytes) -> None:
        """One answer message of a streaming call."""

    @abc.abstractmethod
    def _finish(
        self, stream: CallStream, code: int, message: str, extra: Headers | tuple[()] = ()
    ) -> None:
        """End the call with status ``code`` (and ``extra`` trailing metadata)."""

    @abc.abstractmethod
    def _release(self, stream: CallStream) -> None:
        """A streaming handler read every message it had: let the client send more."""

    # -- starting ----------------------------------------------------------------------

    def _admitted(self, stream: CallStream, headers: Headers) -> bool:
        """Whether the call may go on; if not it is ended with its status.  What the
        handler gets with its request is set here (the headers, or what ``admit`` made
        of them)."""
        encoding = stream.encoding
        if encoding != b"identity" and not inflate_supported(encoding):
            self._finish(
                stream, UNIMPLEMENTED, f"grpc-encoding '{encoding.decode()}' is not supported"
            )
            return False
        method = stream.method
        if method.admit is not None:
            try:
                stream.headers = method.admit(headers)
            except Exception as exc:  # refused before any message is read
                self._fail_call(stream, exc)
                return False
        elif method.metadata:
            stream.headers = headers
        return True

    def _start_call(self, stream: CallStream, timeout: float | None, end: bool) -> None:
        """Arm the call's deadline; a bidirectional call's handler starts now, the others
        once the request is complete (``end``: it already is)."""
        if timeout is not None:
            stream.timer = self._loop.call_later(timeout, self._deadline, stream)
        if stream.method.kind is Kind.BIDI_STREAM:
            stream.queue = asyncio.Queue()
            stream.task = self._loop.create_task(self._bidi(stream))
            if end:
                stream.queue.put_nowait(None)
        elif end:
            self._end_of_requests(stream)

    # -- request messages --------------------------------------------------------------

    def _compressed(self, stream: CallStream, message: bytes) -> bytes | None:
        """A compressed message inflated, bounded by the message size limit; None (the
        call ended) when it cannot be."""
        if stream.encoding == b"identity":
            self._finish(stream, INTERNAL, "compressed message without a grpc-encoding")
            return None
        try:
            return inflate(message, stream.encoding, self.max_message_size)
        except DecompressedTooLarge:
            self._finish(
                stream,
                RESOURCE_EXHAUSTED,
                f"Received message larger than max (more than {self.max_message_size} "
                "bytes once decompressed)",
            )
        except DecompressionError as exc:
            self._finish(stream, INTERNAL, f"failed to decompress a message: {exc}")
        return None

    def _too_large(self, stream: CallStream, length: int) -> None:
        """A request message longer than :attr:`max_message_size` ends the call."""
        self._finish(
            stream,
            RESOURCE_EXHAUSTED,
            f"Received message larger than max ({length} vs. {self.max_message_size})",
        )

    def _message(self, stream: CallStream, message: bytes) -> None:
        """A request message: to a streaming handler's queue, or kept for the handler."""
        if stream.queue is not None:
            stream.queue.put_nowait(message)
        elif stream.messages:  # refused at once rather than buffered to the end
            self._finish(
                stream,
                UNIMPLEMENTED,
                f"a {stream.method.kind.value} call takes one request message, got more",
            )
        else:
            stream.messages.append(message)

    def _end_of_requests(self, stream: CallStream) -> None:
        """The client half-closed ``stream``: start a unary or server-streaming call."""
        stream.remote_closed = True
        if stream.done:
            return
        if stream.recv:
            self._finish(stream, INTERNAL, "the request ended inside a message")
            return
        if stream.queue is not None:
            stream.queue.put_nowait(None)
            return
        if len(stream.messages) != 1:
            self._finish(
                stream,
                UNIMPLEMENTED if stream.messages else INTERNAL,
                f"a {stream.method.kind.value} call takes one request message, "
                f"got {len(stream.messages)}",
            )
            return
        message = stream.messages.pop()
        if stream.method.kind is Kind.UNARY:
            if stream.method.direct is not None and self._direct(stream, message):
                return
            # eagerly: a call that completes without waiting needs no task
            stream.task = start_eagerly(self._loop, self._unary(stream, message))
        else:
            stream.task = self._loop.create_task(self._server_stream(stream, message))

    def _direct(self, stream: CallStream, message: bytes) -> bool:
        """Offer a unary call to its method's callback fast path; True when taken."""
        method = stream.method
        assert method.direct is not None
        reply = UnaryReply(self, stream, message)
        stream.task = reply  # a reset or a deadline reaches the fast path through it
        try:
            taken = method.direct(method.decode(message), stream.headers, reply)
        except Exception as exc:
            stream.task = None
            self._fail_call(stream, exc)
            return True
        if not taken:
            stream.task = None
        return taken

    # -- handlers ----------------------------------------------------------------------

    async def _unary(self, stream: CallStream, message: bytes) -> None:
        method = stream.method
        try:
            if method.metadata:
                response = await method.handler(method.decode(message), stream.headers)
            else:
                response = await method.handler(method.decode(message))
            payload = method.encode(response)
        except Exception as exc:
            self._fail_call(stream, exc)
            return
        self._respond(stream, payload)

    async def _server_stream(self, stream: CallStream, message: bytes) -> None:
        method = stream.method
        if method.metadata:
            await self._stream_out(
                stream, lambda: method.handler(method.decode(message), stream.headers)
            )
        else:
            await self._stream_out(stream, lambda: method.handler(method.decode(message)))

    async def _bidi(self, stream: CallStream) -> None:
        method = stream.method
        queue = stream.queue
        assert queue is not None

        async def requests() -> AsyncIterator[Any]:
            while (message := await queue.get()) is not None:
                if stream.unread and queue.empty():
                    self._release(stream)
                yield method.decode(message)

        if method.metadata:
            await self._stream_out(stream, lambda: method.handler(requests(), stream.headers))
        else:
            await self._stream_out(stream, lambda: method.handler(requests()))

    async def _stream_out(self, stream: CallStream, responses: Callable[[], Any]) -> None:
        """Send every response of the async generator ``responses()`` makes, then OK
        (or the status of the error that ended it)."""
        encode = stream.method.encode
        try:
            async with aclosing(responses()) as answers:
                async for response in answers:
                    if stream.done:
                        break
                    self._send_message(stream, encode(response))
                    if len(stream.pending) >= STREAM_BUFFER:  # a slow reader: wait for it
                        stream.drained = self._loop.create_future()
                        await stream.drained
        except Exception as exc:
            self._fail_call(stream, exc)
            return
        self._finish(stream, OK, "")

    def _fail_call(self, stream: CallStream, exc: Exception) -> None:
        """End ``stream`` with the status (and trailers) of the error its handler raised."""
        code, message = status_of(exc)
        self._finish(stream, code, message, exc.trailers if isinstance(exc, GrpcError) else ())

    def _deadline(self, stream: CallStream) -> None:
        """The call's ``grpc-timeout`` passed: cancel its handler, DEADLINE_EXCEEDED."""
        stream.timer = None
        if not stream.done:
            if stream.task is not None:
                stream.task.cancel()
            self._finish(stream, DEADLINE_EXCEEDED, "Deadline Exceeded")


class UnaryReply:
    """How a unary method's ``direct`` fast path answers its call (see
    :class:`~openeas.transport.grpc_call.Method`): exactly one of :meth:`respond`,
    :meth:`fail` or :meth:`fallback`, from whatever callback has the outcome.

    While the call is open the transport holds it as the call's task: when the client
    resets the call, its ``grpc-timeout`` passes or the connection goes, :meth:`cancel`
    calls :attr:`on_cancel` (the fast path then gives up what it holds); answering
    after that is harmless (nothing is sent).
    """

    __slots__ = ("_runner", "_stream", "_message", "on_cancel")

    def __init__(self, runner: CallRunner, stream: CallStream, message: bytes) -> None:
        self._runner = runner
        self._stream = stream
        self._message = message
        #: called (once) when the call is over for the client before it was answered
        self.on_cancel: Callable[[], None] | None = None

    def respond(self, response: Any) -> None:
        """The call's answer, then OK."""
        self._settle()
        stream = self._stream
        try:
            payload = stream.method.encode(response)
        except Exception as exc:
            self._runner._fail_call(stream, exc)
            return
        self._runner._respond(stream, payload)

    def fail(self, exc: Exception) -> None:
        """End the call with the status of ``exc``, as if the handler had raised it."""
        self._settle()
        self._runner._fail_call(self._stream, exc)

    def fallback(self) -> None:
        """Run the method's coroutine ``handler`` on the call after all."""
        self._settle()
        stream = self._stream
        if not stream.done:
            runner = self._runner
            stream.task = start_eagerly(runner._loop, runner._unary(stream, self._message))

    def cancel(self) -> None:
        """The call is over for the client (called by the transport)."""
        self._settle()
        on_cancel, self.on_cancel = self.on_cancel, None
        if on_cancel is not None:
            on_cancel()

    def _settle(self) -> None:
        if self._stream.task is self:
            self._stream.task = None
