"""Triton's system shared memory extension: a registry of POSIX shared memory regions.

A client creates a POSIX shared memory object (``shm_open(key)``: ``/dev/shm/<key>``),
registers ``name -> (key, offset, byte_size)`` with the server and then names the region
in a tensor's parameters instead of sending the data:

* an input with ``shared_memory_region`` and ``shared_memory_byte_size`` (and optionally
  ``shared_memory_offset``) takes its data from the region: a zero-copy, read-only numpy
  view of the mapping (BYTES inputs are decoded from their length-prefixed elements);
* a requested output with those parameters is written into the region after inference;
  the response then carries only its name, datatype and shape (as Triton's: no data, no
  parameters; its data is the shared :data:`SHM_PLACEHOLDER` array, which tells the
  codecs to write none).

The codecs only record those parameters (and put an empty placeholder where the data
would be); :class:`SharedMemoryRegistry` resolves them for the data plane, so both front
ends share one implementation.  Messages and error codes follow Triton's.

Each region is mapped read-write when it is registered and closed when it is
unregistered (or at shutdown).  A request in flight holds memoryviews of the mapping:
then ``mmap.close()`` refuses, the registry just drops the mapping, and Python unmaps it
when the last view of it is released, so unregistering never pulls memory out from
under a running request.
"""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np

from openeas.protocol import datatypes
from openeas.protocol.errors import (
    AlreadyExists,
    InternalError,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from openeas.protocol.http_codec import SHM_PLACEHOLDER
from openeas.protocol.types import InferRequest, InferResponse, Tensor

#: Tensor parameters of the extension.
REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
KEYS = (REGION, BYTE_SIZE, OFFSET)

#: Where Linux keeps POSIX shared memory objects (what ``shm_open`` opens).
SHM_DIR = "/dev/shm"


class SharedMemoryDisabled(Unavailable):
    """Shared memory used while ``--allow-client-shm`` is off.

    Triton answers an API that its ``--*-restricted-api`` options turn off with HTTP 403
    and gRPC UNAVAILABLE; this is the same kind of refusal.
    """

    http_status = 403


def disabled_error() -> SharedMemoryDisabled:
    return SharedMemoryDisabled(
        "system shared memory is disabled on this server; start the server with "
        "--allow-client-shm=true to register and use shared memory regions"
    )


@dataclass(slots=True)
class Region:
    """One registered region: ``byte_size`` bytes at ``offset`` of the object ``key``."""

    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap
    #: where the region starts in ``mapping`` (mappings start page-aligned)
    start: int
    #: the object, kept open to check its size on use: touching a page of the mapping
    #: beyond the end of a truncated object kills the process with SIGBUS
    fd: int = -1

    def view(self, offset: int, byte_size: int) -> memoryview:
        """``byte_size`` bytes at ``offset`` of the region (bounds already checked)."""
        begin = self.start + offset
        return memoryview(self.mapping)[begin : begin + byte_size]

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "offset": self.offset,
            "byte_size": self.byte_size,
        }

    def backed(self, offset: int, byte_size: int) -> int | None:
        """None when the object still holds the region's bytes ``offset`` to
        ``offset + byte_size``, else the object's size now."""
        if self.fd < 0:
            return None
        size = os.fstat(self.fd).st_size
        return None if self.offset + offset + byte_size <= size else size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            self.mapping.close()
        except BufferError:
            # In-flight requests still hold views: the mapping goes with the last one.
            pass


@dataclass(slots=True)
class OutputTarget:
    """Where one requested output goes: a view of its region, taken before inference."""

    name: str
    region: str
    offset: int | None
    byte_size: int
    view: memoryview


def _non_negative_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument(f"{what} must be a non-negative integer, got {value!r}")
    return value


def tensor_parameters(params: dict[str, Any], tensor: str) -> tuple[str, int, int | None]:
    """``(region, byte_size, offset)`` of a tensor whose parameters name a region.

    ``offset`` is None when the client did not give one.
    """
    region = params.get(REGION)
    if not isinstance(region, str):
        raise InvalidArgument(
            f"invalid value type for '{REGION}' parameter for tensor '{tensor}', expected a string"
        )
    if BYTE_SIZE not in params:
        raise InvalidArgument(
            f"'{BYTE_SIZE}' must be specified along with '{REGION}' parameter for tensor '{tensor}'"
        )
    byte_size = params[BYTE_SIZE]
    if not isinstance(byte_size, int) or isinstance(byte_size, bool) or byte_size < 0:
        raise InvalidArgument(
            f"invalid value for '{BYTE_SIZE}' parameter for tensor '{tensor}', expected a "
            f"non-negative integer, got {byte_size!r}"
        )
    offset = params.get(OFFSET)
    if offset is not None and (
        not isinstance(offset, int) or isinstance(offset, bool) or offset < 0
    ):
        raise InvalidArgument(
            f"invalid value for '{OFFSET}' parameter for tensor '{tensor}', expected a "
            f"non-negative integer, got {offset!r}"
        )
    return region, byte_size, offset


def _object_path(key: str) -> str:
    """``shm_open``'s file for ``key``: one name under /dev/shm, links refused."""
    name = key.lstrip("/")
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise InternalError(f"Unable to open shared memory region: '{key}'")
    return os.path.join(SHM_DIR, name)


class SharedMemoryRegistry:
    """The registered system shared memory regions, by name."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}

    def __len__(self) -> int:
        return len(self._regions)

    # -- the extension's API -----------------------------------------------------------

    def register(self, name: str, key: Any, offset: Any, byte_size: Any) -> None:
        if not name:
            raise InvalidArgument(
                "'region name' is necessary to register system shared memory region"
            )
        if key is None:
            raise InvalidArgument("Shared memory register request has no 'key' field")
        if not isinstance(key, str):
            raise InvalidArgument("Shared memory register request: 'key' must be a string")
        if byte_size is None:
            raise InvalidArgument("Shared memory register request has no 'byte_size' field")
        byte_size = _non_negative_int(byte_size, "Shared memory register request: 'byte_size'")
        offset = _non_negative_int(
            0 if offset is None else offset, "Shared memory register request: 'offset'"
        )
        if name in self._regions:
            raise AlreadyExists(f"shared memory region '{name}' already in manager")

        path = _object_path(key)
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            raise InternalError(f"Unable to open shared memory region: '{key}'") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InternalError(f"Invalid shared memory region: '{key}'")
            if byte_size == 0 or offset + byte_size > info.st_size:
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': invalid args: "
                    f"offset {offset} + byte_size {byte_size} must be within the "
                    f"{info.st_size} bytes of shared memory object '{key}' (and byte_size "
                    "must not be 0)"
                )
            aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
            try:
                mapping = mmap.mmap(
                    fd,
                    offset - aligned + byte_size,
                    flags=mmap.MAP_SHARED,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE,
                    offset=aligned,
                )
            except (OSError, ValueError) as exc:
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': unable to map "
                    f"'{key}': {exc}"
                ) from None
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = Region(name, key, offset, byte_size, mapping, offset - aligned, fd)

    def unregister(self, name: str = "") -> None:
        """Unregister ``name`` (nothing happens for an unknown name) or, with "", all."""
        if not name:
            self.unregister_all()
            return
        region = self._regions.pop(name, None)
        if region is not None:
            region.close()

    def unregister_all(self) -> None:
        regions = list(self._regions.values())
        self._regions.clear()
        for region in regions:
            region.close()

    def status(self, name: str = "") -> list[dict[str, Any]]:
        if not name:
            return [region.status() for region in self._regions.values()]
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find system shared memory region: '{name}'")
        return [region.status()]

    # -- CUDA shared memory: this server has no GPU -------------------------------------
    # Triton built without GPU support answers the CUDA API this way: status and
    # unregister work (there is never a CUDA region), register fails.  Clients call
    # unregister_cuda_shared_memory() in their clean-up, so it must succeed.

    def cuda_status(self, name: str = "") -> list[dict[str, Any]]:
        if not name:
            return []
        if name in self._regions:
            raise NotFound(
                f"The region named '{name}' is registered as system shared memory, "
                "not CUDA shared memory"
            )
        raise NotFound(f"Unable to find cuda shared memory region: '{name}'")

    @staticmethod
    def cuda_register(name: str) -> None:
        raise InvalidArgument(
            f"failed to register CUDA shared memory region: '{name}', GPUs not supported"
        )

    # -- inference ---------------------------------------------------------------------

    def view(self, name: str, offset: int, byte_size: int) -> memoryview:
        """``byte_size`` bytes at ``offset`` of region ``name``, bounds checked."""
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find shared memory region: '{name}'")
        if offset and offset >= region.byte_size:
            raise InvalidArgument(f"Invalid offset for shared memory region: '{name}'")
        if offset + byte_size > region.byte_size:
            raise InvalidArgument(
                f"Invalid offset + byte size for shared memory region: '{name}' (offset "
                f"{offset} + byte size {byte_size} > region size {region.byte_size})"
            )
        size = region.backed(offset, byte_size)
        if size is not None:
            raise InvalidArgument(
                f"shared memory region '{name}' is no longer backed: its object "
                f"'{region.key}' was truncated to {size} bytes, fewer than the region's "
                f"offset {region.offset} + {offset + byte_size} bytes used"
            )
        return region.view(offset, byte_size)

    def read_inputs(self, request: InferRequest) -> None:
        """Replace the data of every input that names a region with a view of it."""
        for tensor in request.inputs:
            params = tensor.parameters
            if REGION not in params:
                continue
            region, byte_size, offset = tensor_parameters(params, tensor.name)
            view = self.view(region, offset or 0, byte_size)
            tensor.data = _input_array(request.model_name, tensor, view)
            tensor.parameters = {k: v for k, v in params.items() if k not in KEYS}

    def output_targets(self, request: InferRequest) -> list[OutputTarget]:
        """The outputs to write into shared memory, their regions looked up now."""
        targets: list[OutputTarget] = []
        for output in request.outputs or ():
            params = output.parameters
            if REGION not in params:
                continue
            if output.classification:
                raise InvalidArgument(
                    "output can't set both 'shared_memory_region' and 'classification'"
                )
            region, byte_size, offset = tensor_parameters(params, output.name)
            view = self.view(region, offset or 0, byte_size)
            targets.append(OutputTarget(output.name, region, offset, byte_size, view))
        return targets


def _input_array(model: str, tensor: Tensor, view: memoryview) -> np.ndarray:
    array = datatypes.array_from_buffer(
        tensor.datatype, tensor.shape, view, f"input '{tensor.name}' for model '{model}'"
    )
    if array.dtype.kind != "O":
        array.flags.writeable = False
    return array


def write_outputs(response: InferResponse, targets: list[OutputTarget]) -> None:
    """Copy each target output into its region; the response keeps only its metadata."""
    positions = {tensor.name: index for index, tensor in enumerate(response.outputs)}
    for target in targets:
        index = positions.get(target.name)
        if index is None:
            continue
        tensor = response.outputs[index]
        if tensor.datatype == "BYTES":
            data: bytes | memoryview = datatypes.serialize_bytes(tensor.data)
        else:
            array = np.ascontiguousarray(tensor.data).reshape(-1)
            data = memoryview(array.view(np.uint8))
        size = len(data)
        if size > target.byte_size:
            raise InternalError(
                f"shared memory size specified with the request for output '{target.name}' "
                f"({target.byte_size} bytes) should be at least {size} bytes to hold the "
                "results"
            )
        target.view[:size] = data
        # As Triton's answer (HTTP and gRPC): the output's name, datatype and shape only,
        # no parameters; the client knows where it asked the data to go.
        response.outputs[index] = Tensor(
            tensor.name, tensor.datatype, list(tensor.shape), SHM_PLACEHOLDER
        )
