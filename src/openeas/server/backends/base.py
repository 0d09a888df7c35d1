"""The contract between the model server and a backend.

A :class:`Backend` completes a model's configuration and creates one
:class:`ModelInstance` per ``instance_group`` instance.  The scheduler calls
:meth:`ModelInstance.execute` from that instance's own worker thread with a batch of
requests; it never runs two executions of one instance at once.

A *decoupled* instance (``model_transaction_policy { decoupled: true }``) answers through
one :class:`ResponseStream` per request instead: :meth:`ModelInstance.execute_decoupled`
may send zero or more responses per request, from any thread and after it returned;
the request stays open until its final flag.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from openeas.protocol.errors import InferenceError, InternalError, Unsupported
from openeas.protocol.types import InferRequest, InferResponse
from openeas.server.repository.config import ModelConfig, default_model_filename


class BlockingCallOnLoop(InternalError):
    """A blocking inference call was made on the server's event loop thread.

    The loop would have to run the request while it waits for it, so the call fails
    at once instead of deadlocking the server.
    """


class InferenceHandle(Protocol):
    """What a backend may ask of the server: inference on other models (Python BLS)."""

    loop: asyncio.AbstractEventLoop

    async def infer(self, request: InferRequest) -> InferResponse:
        """Run a request on the server's event loop."""
        ...

    def infer_blocking(self, request: InferRequest, timeout: float | None = None) -> InferResponse:
        """Run a request from a worker thread, waiting for its response.

        Raises :class:`BlockingCallOnLoop` when called on the thread of :attr:`loop`,
        which would wait for itself.
        """
        ...

    def is_model_ready(self, name: str, version: str = "") -> bool: ...


@dataclass
class ModelContext:
    """Everything a backend needs to know about one model version it loads."""

    name: str
    version: int
    config: ModelConfig
    model_dir: Path
    backend_config: dict[str, str] = field(default_factory=dict)
    handle: InferenceHandle | None = None

    @property
    def version_dir(self) -> Path:
        return self.model_dir / str(self.version)

    @property
    def model_path(self) -> Path:
        """The model file (or directory) inside the version directory."""
        return self.version_dir / default_model_filename(self.config)


@dataclass
class ExecTiming:
    """Where an execution's time went; backends fill what they can measure.

    Unfilled parts stay 0 and the scheduler attributes the whole execution to
    ``compute_infer``.
    """

    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0


ExecResult = list[InferResponse | InferenceError]

#: What a :class:`ResponseStream` delivers: a response or error (or None with a bare
#: final flag) and whether it is the request's final one.
StreamItem = tuple[InferResponse | InferenceError | None, bool]


class StreamClosed(Exception):
    """A response was sent on a :class:`ResponseStream` after its final flag."""


class ResponseStream:
    """Where a decoupled model's responses to one request go.

    :meth:`send` may be called from any thread; items are handed to the event loop with
    ``loop.call_soon_threadsafe`` and read there with :meth:`get`.  The final flag
    closes the stream: sending again raises :class:`StreamClosed`.  :meth:`cancel`
    (the client went away) only marks the stream; the model sees it through
    :attr:`cancelled` and decides when to close it.
    """

    __slots__ = ("_loop", "_queue", "_lock", "_final", "cancelled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        self._lock = threading.Lock()
        self._final = False
        #: Set when the client cancelled the request (or stopped reading its responses).
        self.cancelled = False

    @property
    def closed(self) -> bool:
        """Whether the final flag was sent."""
        return self._final

    def send(self, response: InferResponse | InferenceError | None, final: bool = False) -> None:
        """Hand one response (and/or the final flag) to the reader; thread-safe."""
        with self._lock:
            if self._final:
                raise StreamClosed("the response sender of this request is already closed")
            if final:
                self._final = True
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (response, final))
        except RuntimeError:  # the loop is closed: the server is gone, nobody reads
            pass

    def close_with(self, error: InferenceError) -> bool:
        """Send ``error`` as the final response unless the stream is closed already."""
        try:
            self.send(error, True)
        except StreamClosed:
            return False
        return True

    def cancel(self) -> None:
        """Mark the request cancelled (the model may poll it and finish early)."""
        self.cancelled = True

    async def get(self) -> StreamItem:
        """The next response sent (waits for it on the event loop)."""
        return await self._queue.get()


class ModelInstance(ABC):
    """One loaded copy of a model that executes batches of requests."""

    #: True when :meth:`execute` may also run on the server's event loop thread: it never
    #: blocks on other requests (no BLS) nor on its own event loop.  The scheduler then
    #: runs executions that measure fast inline, skipping the thread hand-off.
    inline_capable: bool = False
    #: True for a model with the decoupled transaction policy: the scheduler calls
    #: :meth:`execute_decoupled` instead of :meth:`execute` (and never inline).
    decoupled: bool = False

    @abstractmethod
    def execute(self, requests: list[InferRequest], timing: ExecTiming) -> ExecResult:
        """Run ``requests``; return one response or error per request, in order."""

    def execute_decoupled(
        self, requests: list[InferRequest], streams: list[ResponseStream], timing: ExecTiming
    ) -> None:
        """Start ``requests`` of a decoupled model; answer each through its stream.

        Returning frees the instance for the next batch; the requests stay open until
        the model sends their final flag.  Raising fails every request whose stream is
        still open.
        """
        raise Unsupported(f"{type(self).__name__} does not support decoupled models")

    def finalize(self) -> None:  # noqa: B027 - optional hook
        """Release resources; called once after the last execution."""


class Backend(ABC):
    """A kind of model runtime (onnxruntime, python, ...)."""

    name: str = ""

    def auto_complete_config(  # noqa: B027 - optional hook
        self, config: ModelConfig, model_dir: Path, version: int, backend_config: dict[str, str]
    ) -> None:
        """Fill what the config leaves out from the model itself (only when not strict).

        ``config`` is modified in place.  The default does nothing.
        """

    @abstractmethod
    def create_instance(
        self, context: ModelContext, instance_name: str, device_id: int
    ) -> ModelInstance:
        """Load one instance of the model version described by ``context``."""
