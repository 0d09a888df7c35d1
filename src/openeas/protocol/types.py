"""In-memory inference requests and responses shared by the front ends and the server.

A front end decodes its wire format into these objects; the data plane, schedulers and
backends only ever see them.  Tensor data is always a numpy array already shaped as the
tensor's ``shape`` (BYTES tensors are ``object`` arrays of ``bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class Tensor:
    """A named tensor: Triton datatype, shape and its data as a numpy array."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for, with its per-output parameters.

    ``binary`` is None when the client did not say; the request-level default applies.
    ``classification`` > 0 asks for the top-k classes instead of the raw tensor.
    """

    name: str
    binary: bool | None = None
    classification: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    """One inference request as the data plane sees it.

    ``model_version`` is "" when the client did not pin a version.  ``outputs`` is None
    when the client asked for every output.  ``binary_output`` is the request-level
    ``binary_data_output`` default for outputs that do not say.
    """

    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_output: bool = False

    def input(self, name: str) -> Tensor | None:
        for tensor in self.inputs:
            if tensor.name == name:
                return tensor
        return None

    @property
    def correlation_id(self) -> int | str:
        return self.parameters.get("sequence_id", 0)

    @property
    def sequence_start(self) -> bool:
        return bool(self.parameters.get("sequence_start", False))

    @property
    def sequence_end(self) -> bool:
        return bool(self.parameters.get("sequence_end", False))


@dataclass(slots=True)
class InferResponse:
    """The answer to one :class:`InferRequest`."""

    model_name: str
    model_version: str
    id: str = ""
    outputs: list[Tensor] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)

    def output(self, name: str) -> Tensor | None:
        for tensor in self.outputs:
            if tensor.name == name:
                return tensor
        return None
