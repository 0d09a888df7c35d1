"""Bounded decompression of request bodies and gRPC messages.

A client controls how far its bytes inflate: 500 KB of gzip can become 500 MB. Every
place that inflates client data (the HTTP front end, the gRPC transport, the gateway's
sequence scan) goes through :func:`inflate`, which never produces more than ``limit + 1``
bytes, so the caller can tell "too large" apart from "exactly at the limit" without ever
holding the whole inflated payload.
"""

from __future__ import annotations

import zlib

# wbits for zlib.decompressobj: 16 + MAX_WBITS reads a gzip member, MAX_WBITS a zlib
# stream (HTTP's "deflate" is the zlib format, RFC 9110 8.4.1.2).
_WBITS = {b"gzip": 16 + zlib.MAX_WBITS, b"x-gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}


class DecompressionError(ValueError):
    """The data is not valid for its encoding (corrupt, truncated, or trailing garbage)."""


class DecompressedTooLarge(ValueError):
    """The data inflates to more than the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"decompressed data exceeds the limit of {limit} bytes")
        self.limit = limit


def supported(encoding: bytes) -> bool:
    """Whether :func:`inflate` knows ``encoding`` (lower-case, stripped)."""
    return encoding in _WBITS


def inflate(data: bytes, encoding: bytes, limit: int) -> bytes:
    """Decompress ``data`` (``gzip`` or ``deflate``) to at most ``limit`` bytes.

    Raises :class:`DecompressedTooLarge` as soon as the output would exceed ``limit`` (the
    work done is bounded by ``limit``, not by what the data would inflate to), and
    :class:`DecompressionError` for data that is not a complete, valid stream. ``encoding``
    must be one that :func:`supported` accepts.
    """
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise DecompressionError(f"unsupported encoding {encoding!r}")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise DecompressionError(str(exc)) from None
    if len(out) > limit or (inflater.unconsumed_tail and not inflater.eof):
        # More output is pending than the limit allows.
        raise DecompressedTooLarge(limit)
    if not inflater.eof:
        raise DecompressionError("incomplete or truncated stream")
    if inflater.unused_data:
        raise DecompressionError("trailing data after the compressed stream")
    return out
