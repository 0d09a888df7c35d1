"""The response cache (``--cache-config local,size=<bytes>``, ``response_cache { enable }``).

Responses of models that enable the cache are kept in one server-wide LRU, keyed on the
model, its version, the request's inputs (name, datatype, shape, bytes) and the outputs it
asked for (name, classification).  The size bound counts tensor bytes; an entry larger than
the whole cache is not stored.  Cached arrays are never modified: responses share them.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass

import numpy as np

from openeas.protocol import datatypes
from openeas.protocol.types import InferRequest, InferResponse, Tensor


@dataclass(slots=True)
class _Entry:
    outputs: list[Tensor]
    parameters: dict
    size: int


class ResponseCache:
    """A byte-bounded LRU of inference responses."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._entries: collections.OrderedDict[bytes, _Entry] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(request: InferRequest, version: str) -> bytes:
        digest = hashlib.blake2b(digest_size=32)
        digest.update(f"{request.model_name}\0{version}\0".encode())
        for tensor in sorted(request.inputs, key=lambda t: t.name):
            digest.update(f"{tensor.name}\0{tensor.datatype}\0{tensor.shape}\0".encode())
            if tensor.datatype == "BYTES":
                digest.update(datatypes.serialize_bytes(tensor.data))
            else:
                digest.update(np.ascontiguousarray(tensor.data).view(np.uint8).reshape(-1))
        if request.outputs:
            for output in sorted(request.outputs, key=lambda o: o.name):
                digest.update(f"out\0{output.name}\0{output.classification}\0".encode())
        return digest.digest()

    def get(self, key: bytes, request: InferRequest, version: str) -> InferResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return InferResponse(
            request.model_name, version, request.id, list(entry.outputs), dict(entry.parameters)
        )

    def put(self, key: bytes, response: InferResponse) -> None:
        size = sum(_nbytes(t) for t in response.outputs) + len(key)
        if size > self.capacity or key in self._entries:
            return
        while self.used + size > self.capacity and self._entries:
            _, old = self._entries.popitem(last=False)
            self.used -= old.size
        outputs = [
            Tensor(t.name, t.datatype, list(t.shape), _frozen(t.data)) for t in response.outputs
        ]
        self._entries[key] = _Entry(outputs, dict(response.parameters), size)
        self.used += size


def _nbytes(tensor: Tensor) -> int:
    if tensor.datatype == "BYTES":
        return sum(len(v) + 4 for v in tensor.data.reshape(-1))
    return int(tensor.data.nbytes)


def _frozen(array: np.ndarray) -> np.ndarray:
    copy = np.array(array, copy=True)
    copy.flags.writeable = False
    return copy
