"""The contract between the model server and a backend.

A :class:`Backend` completes a model's configuration and creates one
:class:`ModelInstance` per ``instance_group`` instance.  The scheduler calls
:meth:`ModelInstance.execute` from that instance's own worker thread with a batch of
requests; it never runs two executions of one instance at once.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from openeas.protocol.errors import InferenceError
from openeas.protocol.types import InferRequest, InferResponse
from openeas.server.repository.config import ModelConfig, default_model_filename


class InferenceHandle(Protocol):
    """What a backend may ask of the server: inference on other models (Python BLS)."""

    loop: asyncio.AbstractEventLoop

    async def infer(self, request: InferRequest) -> InferResponse:
        """Run a request on the server's event loop."""
        ...

    def infer_blocking(self, request: InferRequest, timeout: float | None = None) -> InferResponse:
        """Run a request from a worker thread, waiting for its response."""
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


class ModelInstance(ABC):
    """One loaded copy of a model that executes batches of requests."""

    #: True when :meth:`execute` may also run on the server's event loop thread: it never
    #: blocks on other requests (no BLS) nor on its own event loop.  The scheduler then
    #: runs executions that measure fast inline, skipping the thread hand-off.
    inline_capable: bool = False

    @abstractmethod
    def execute(self, requests: list[InferRequest], timing: ExecTiming) -> ExecResult:
        """Run ``requests``; return one response or error per request, in order."""

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
