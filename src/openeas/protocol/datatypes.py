"""Triton datatypes and their numpy equivalents, and the BYTES wire encoding.

BYTES tensors are numpy ``object`` arrays whose elements are ``bytes``; on the wire every
element is a 4-byte little-endian length followed by that many bytes.  BF16 uses
``ml_dtypes.bfloat16`` so that it round-trips without loss.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import ml_dtypes
import numpy as np

from openeas.protocol.errors import InvalidArgument

BF16 = np.dtype(ml_dtypes.bfloat16)

_TRITON_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": BF16,
    "BYTES": np.dtype(np.object_),
}

_NUMPY_TO_TRITON: dict[np.dtype, str] = {v: k for k, v in _TRITON_TO_NUMPY.items()}
_NUMPY_TO_TRITON[np.dtype(np.bytes_)] = "BYTES"

#: Datatypes that JSON cannot carry; they travel only as binary tensor data.
BINARY_ONLY = frozenset({"FP16", "BF16"})

#: ``TYPE_FP32`` style names used by model_config.proto.
_CONFIG_PREFIX = "TYPE_"


def is_valid(datatype: str) -> bool:
    return datatype in _TRITON_TO_NUMPY


def to_numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype for a Triton datatype name such as ``"FP32"``."""
    try:
        return _TRITON_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidArgument(f"invalid datatype '{datatype}'") from None


def from_numpy_dtype(dtype: np.dtype) -> str:
    """The Triton datatype name for a numpy dtype (unicode and bytes strings are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    try:
        return _NUMPY_TO_TRITON[dtype]
    except KeyError:
        raise InvalidArgument(f"unsupported numpy dtype '{dtype}'") from None


def config_to_triton(config_type: str) -> str:
    """``TYPE_FP32`` -> ``FP32``; ``TYPE_STRING`` -> ``BYTES``."""
    name = config_type.removeprefix(_CONFIG_PREFIX)
    return "BYTES" if name == "STRING" else name


def triton_to_config(datatype: str) -> str:
    """``FP32`` -> ``TYPE_FP32``; ``BYTES`` -> ``TYPE_STRING``."""
    return _CONFIG_PREFIX + ("STRING" if datatype == "BYTES" else datatype)


def element_count(shape: Iterable[int]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def serialize_bytes(array: np.ndarray) -> bytes:
    """Encode a BYTES tensor: each element as a 4-byte little-endian length + its bytes."""
    parts: list[bytes] = []
    pack = struct.Struct("<I").pack
    for item in array.reshape(-1):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, bytes | bytearray | memoryview):
            item = str(item).encode("utf-8")
        parts.append(pack(len(item)))
        parts.append(bytes(item))
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, count: int | None = None) -> np.ndarray:
    """Decode length-prefixed BYTES elements into a 1-D ``object`` array.

    ``count`` is the number of elements the shape promises; a buffer that holds a
    different number, or a length prefix that runs past the end, is an error.
    """
    view = memoryview(buffer).cast("B") if not isinstance(buffer, bytes) else buffer
    items: list[bytes] = []
    offset = 0
    end = len(view)
    unpack = struct.Struct("<I").unpack_from
    while offset < end:
        if offset + 4 > end:
            raise InvalidArgument("BYTES tensor data is truncated: incomplete length prefix")
        (length,) = unpack(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidArgument(
                f"BYTES tensor data is truncated: element of {length} bytes runs past the end"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if count is not None and len(items) != count:
        raise InvalidArgument(
            f"BYTES tensor holds {len(items)} elements, but its shape needs {count}"
        )
    out = np.empty(len(items), dtype=np.object_)
    out[:] = items
    return out


def to_bytes_array(values: Iterable[object]) -> np.ndarray:
    """Turn an iterable of str/bytes into a BYTES (object) array of bytes."""
    items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]  # type: ignore[arg-type]
    out = np.empty(len(items), dtype=np.object_)
    out[:] = items
    return out


def array_from_buffer(
    datatype: str, shape: list[int], buffer: bytes | memoryview, what: str
) -> np.ndarray:
    """A tensor's data from its raw bytes: a zero-copy view, or decoded BYTES elements.

    ``what`` names the tensor in errors (e.g. ``"input 'x' for model 'm'"``); a buffer whose
    size does not match the shape is an InvalidArgument in Triton's words.
    """
    count = element_count(shape)
    if datatype == "BYTES":
        return deserialize_bytes(buffer, count).reshape(shape)
    dtype = to_numpy_dtype(datatype)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidArgument(
            f"input byte size mismatch for {what}. Expected {expected}, got {len(buffer)} "
            f"(shape {shape} of {datatype})"
        )
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)
