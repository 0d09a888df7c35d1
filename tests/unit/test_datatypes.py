import numpy as np
import pytest

from openeas.protocol import datatypes
from openeas.protocol.errors import InvalidArgument


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("BOOL", np.bool_), ("INT8", np.int8), ("UINT64", np.uint64), ("FP16", np.float16),
     ("FP32", np.float32), ("FP64", np.float64), ("BYTES", np.object_)],
)
def test_triton_numpy_round_trip(name, dtype):
    assert datatypes.to_numpy_dtype(name) == np.dtype(dtype)
    assert datatypes.from_numpy_dtype(np.dtype(dtype)) == name


def test_bf16_is_ml_dtypes():
    assert datatypes.to_numpy_dtype("BF16").itemsize == 2
    assert datatypes.from_numpy_dtype(datatypes.BF16) == "BF16"


def test_unknown_datatype_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="FP8"):
        datatypes.to_numpy_dtype("FP8")


def test_config_type_names():
    assert datatypes.config_to_triton("TYPE_STRING") == "BYTES"
    assert datatypes.config_to_triton("TYPE_FP32") == "FP32"
    assert datatypes.triton_to_config("BYTES") == "TYPE_STRING"


def test_bytes_serialization_round_trip():
    array = np.array([b"a", b"", "\u00e9".encode(), b"\x00\xff"], dtype=np.object_)
    raw = datatypes.serialize_bytes(array)
    assert raw[:4] == (1).to_bytes(4, "little")
    back = datatypes.deserialize_bytes(raw, 4)
    assert list(back) == list(array)


def test_bytes_deserialization_errors():
    raw = datatypes.serialize_bytes(np.array([b"abc"], dtype=np.object_))
    with pytest.raises(InvalidArgument, match="truncated"):
        datatypes.deserialize_bytes(raw[:-1])
    with pytest.raises(InvalidArgument, match="truncated"):
        datatypes.deserialize_bytes(raw[:2])
    with pytest.raises(InvalidArgument, match="needs 2"):
        datatypes.deserialize_bytes(raw, 2)
