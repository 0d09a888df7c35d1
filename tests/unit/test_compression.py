"""Bounded decompression (protocol/compression.py): limits hold before the data is inflated."""

import gzip
import zlib

import pytest

from openeas.protocol.compression import (
    DecompressedTooLarge,
    DecompressionError,
    inflate,
    supported,
)


@pytest.mark.parametrize(("encoding", "compress"), [(b"gzip", gzip.compress), (b"deflate", zlib.compress)])
def test_round_trip_up_to_the_limit(encoding, compress):
    data = bytes(range(256)) * 40
    assert inflate(compress(data), encoding, len(data)) == data


@pytest.mark.parametrize("limit", [0, 1, 9_999])
def test_one_byte_over_the_limit_is_refused(limit):
    with pytest.raises(DecompressedTooLarge):
        inflate(gzip.compress(b"a" * 10_000), b"gzip", limit)


def test_a_bomb_is_stopped_at_the_limit():
    bomb = gzip.compress(b"\0" * (64 << 20))  # ~64 KB that inflate to 64 MB
    with pytest.raises(DecompressedTooLarge) as info:
        inflate(bomb, b"gzip", 1 << 20)
    assert info.value.limit == 1 << 20


@pytest.mark.parametrize(
    "data",
    [b"not gzip", gzip.compress(b"abc" * 100)[:-6], gzip.compress(b"abc") + b"junk"],
    ids=["garbage", "truncated", "trailing"],
)
def test_invalid_streams(data):
    with pytest.raises(DecompressionError):
        inflate(data, b"gzip", 1 << 20)


def test_supported_encodings():
    assert supported(b"gzip") and supported(b"deflate")
    assert not supported(b"br") and not supported(b"identity")
