"""HTTP/2 wire facts for gRPC (RFC 9113, RFC 7541, gRPC's PROTOCOL-HTTP2.md).

Frame layout, the constants a server needs, HPACK *encoding* of the few response headers
gRPC uses (literal fields without indexing, so the encoder keeps no state), the
``grpc-timeout`` and ``grpc-message`` formats, the gathering of header blocks split over
CONTINUATION frames, and a header-block decoder that wraps the
``hpack`` library with a cache: clients send the same block (all indexed fields) for every
call, and a block that leaves the dynamic table unchanged always decodes to the same
headers until the table changes.  Nothing here does I/O.
"""

from __future__ import annotations

import struct
from typing import Final

import hpack

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

# flags
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

# settings
SETTINGS_HEADER_TABLE_SIZE: Final = 0x1
SETTINGS_ENABLE_PUSH: Final = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS: Final = 0x3
SETTINGS_INITIAL_WINDOW_SIZE: Final = 0x4
SETTINGS_MAX_FRAME_SIZE: Final = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE: Final = 0x6

# error codes
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

DEFAULT_WINDOW: Final = 65_535
DEFAULT_MAX_FRAME: Final = 16_384
MAX_WINDOW: Final = 2**31 - 1
MAX_FRAME_LIMIT: Final = 2**24 - 1

FRAME_HEADER: Final = struct.Struct(">HBBBI")  # length as 16+8 bits, type, flags, stream
FRAME_HEADER_SIZE: Final = 9
_U32: Final = struct.Struct(">I")
_SETTING: Final = struct.Struct(">HI")
_GOAWAY: Final = struct.Struct(">II")
#: gRPC's length-prefixed message header: compressed flag, big-endian length.
MESSAGE_HEADER: Final = struct.Struct(">BI")
MESSAGE_HEADER_SIZE: Final = 5


class ProtocolError(Exception):
    """A connection error: the peer broke HTTP/2; answer GOAWAY with ``code``."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One serialized frame."""
    size = len(payload)
    return FRAME_HEADER.pack(size >> 8, size & 0xFF, kind, flags, stream_id) + payload


def settings_frame(settings: dict[int, int]) -> bytes:
    """A SETTINGS frame with ``settings`` (identifier -> value)."""
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in settings.items()))


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """The (identifier, value) pairs of a SETTINGS payload."""
    if len(payload) % 6:
        raise ProtocolError("SETTINGS payload is not a multiple of 6 bytes", FRAME_SIZE_ERROR)
    return [_SETTING.unpack_from(payload, pos) for pos in range(0, len(payload), 6)]


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _U32.pack(code))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, code) + debug)


def take_frames(buf: bytearray, max_size: int) -> list[tuple[int, int, int, bytes]]:
    """Cut the complete frames off the front of ``buf``, as (type, flags, stream id,
    payload); a frame that has not fully arrived stays.  ProtocolError for a frame
    larger than ``max_size`` (the SETTINGS_MAX_FRAME_SIZE we advertised)."""
    frames = []
    pos, end = 0, len(buf)
    while end - pos >= FRAME_HEADER_SIZE:
        high, low, kind, flags, stream_id = FRAME_HEADER.unpack_from(buf, pos)
        size = (high << 8) | low
        if size > max_size:
            raise ProtocolError(f"frame of {size} bytes", FRAME_SIZE_ERROR)
        start = pos + FRAME_HEADER_SIZE
        if end - start < size:
            break
        pos = start + size
        frames.append((kind, flags, stream_id & 0x7FFF_FFFF, bytes(buf[start:pos])))
    del buf[:pos]
    return frames


def data_payload(flags: int, payload: bytes) -> bytes:
    """A DATA frame's data (its padding removed)."""
    if flags & PADDED:
        if not payload or payload[0] >= len(payload):
            raise ProtocolError("bad DATA padding")
        return payload[1 : len(payload) - payload[0]]
    return payload


def header_fragment(flags: int, payload: bytes) -> bytes:
    """A HEADERS frame's header block fragment (padding and priority removed)."""
    if not flags & (PADDED | PRIORITY_FLAG):
        return payload
    pos, end = 0, len(payload)
    if flags & PADDED:
        if not payload:
            raise ProtocolError("padded HEADERS without a pad length")
        pos, end = 1, end - payload[0]
    if flags & PRIORITY_FLAG:
        pos += 5
    if pos > end:
        raise ProtocolError("HEADERS padding exceeds the frame")
    return payload[pos:end]


def read_u31(payload: bytes | memoryview, offset: int = 0) -> int:
    """A 31-bit value (the reserved top bit cleared), as in WINDOW_UPDATE and GOAWAY."""
    return _U32.unpack_from(payload, offset)[0] & 0x7FFF_FFFF


def read_u32(payload: bytes | memoryview, offset: int = 0) -> int:
    return _U32.unpack_from(payload, offset)[0]


# -- HPACK encoding ----------------------------------------------------------------------


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_header(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name, no Huffman coding."""
    return b"\x00" + _hpack_int(len(name), 7, 0) + name + _hpack_int(len(value), 7, 0) + value


#: ``:status: 200`` is entry 8 of HPACK's static table.
STATUS_200: Final = b"\x88"


def encode_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A header block of literal fields (``:status: 200`` as its indexed form)."""
    return b"".join(
        STATUS_200 if (n, v) == (b":status", b"200") else encode_header(n, v) for n, v in headers
    )


class HeaderListTooLarge(Exception):
    """A header block decoded (the HPACK table is in step) to a list over the limit: a
    stream error (the call is refused), not a connection error."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"header list of {size} bytes exceeds the limit of {limit}")
        self.size = size
        self.limit = limit


def header_list_size(headers: list[tuple[bytes, bytes]]) -> int:
    """A header list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it (RFC 9113 6.5.2)."""
    return sum(len(name) + len(value) for name, value in headers) + 32 * len(headers)


def _check_size_updates(block: bytes) -> None:
    """At most two dynamic table size updates, at the start of a block (RFC 7541 4.2):
    a block of nothing but updates costs the decoder work and yields no header."""
    pos, count, end = 0, 0, len(block)
    while pos < end and block[pos] & 0xE0 == 0x20:
        count += 1
        if count > 2:
            raise ProtocolError("more than two table size updates in a block", COMPRESSION_ERROR)
        pos += 1
        if block[pos - 1] & 0x1F == 0x1F:  # the integer continues (RFC 7541 5.1)
            while pos < end and block[pos] & 0x80:
                pos += 1
            pos += 1


class HeaderDecoder:
    """HPACK decoding of one connection's header blocks, cached while the table holds.

    A block made only of indexed fields (or literals without indexing) does not change
    the dynamic table, so the same bytes decode to the same headers until some other
    block changes the table; those results are cached and the cache is dropped whenever
    the table changes.

    Bounded work: a block longer than ``max_header_list_size`` bytes is refused without
    decoding (no sane encoder makes a block longer than the list it encodes; a connection
    error, since the table can no longer be kept in step, RFC 9113 4.3), as is one with
    more than two table size updates; decoding stops at twice the limit (the HPACK
    bomb); a list between the limit and twice it is decoded and refused as a stream
    error (:class:`HeaderListTooLarge`, HTTP's 431).
    """

    #: Upper bound on cached blocks per connection.
    CACHE_SIZE = 64

    def __init__(self, max_header_list_size: int) -> None:
        self.max_header_list_size = max_header_list_size
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = 2 * max_header_list_size
        self._cache: dict[bytes, list[tuple[bytes, bytes]]] = {}

    def _table_state(self) -> tuple[object, int, int]:
        # the newest entry itself (not its id, which a new entry could reuse once the
        # old one is evicted), the number of entries and the table's size limit
        table = self._decoder.header_table
        entries = table.dynamic_entries
        return (entries[0] if entries else None, len(entries), table.maxsize)

    def check_block_size(self, size: int) -> None:
        """ProtocolError(COMPRESSION_ERROR) when a block (so far) of ``size`` bytes is
        already too large to decode; called as HEADERS and CONTINUATION frames arrive."""
        if size > self.max_header_list_size:
            raise ProtocolError(
                f"header block of {size} bytes exceeds the header list limit of "
                f"{self.max_header_list_size}",
                COMPRESSION_ERROR,
            )

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The (name, value) pairs of ``block``; ProtocolError(COMPRESSION_ERROR) if bad,
        :class:`HeaderListTooLarge` if over the limit (the table is then in step)."""
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        self.check_block_size(len(block))
        if block and block[0] & 0xE0 == 0x20:
            _check_size_updates(block)
        before = self._table_state()
        try:
            headers = [(bytes(n), bytes(v)) for n, v in self._decoder.decode(block, raw=True)]
        except hpack.HPACKError as exc:
            raise ProtocolError(f"bad header block: {exc}", COMPRESSION_ERROR) from None
        size = header_list_size(headers)
        if size > self.max_header_list_size:
            self._cache.clear()
            raise HeaderListTooLarge(size, self.max_header_list_size)
        after = self._table_state()
        if after[0] is before[0] and after[1:] == before[1:]:
            if len(self._cache) < self.CACHE_SIZE:
                self._cache[block] = headers
        else:
            self._cache.clear()
        return headers


# -- gRPC header formats -----------------------------------------------------------------

_TIMEOUT_UNITS: Final = {
    "H": 3600.0,
    "M": 60.0,
    "S": 1.0,
    "m": 1e-3,
    "u": 1e-6,
    "n": 1e-9,
}


class HeaderBlockAssembler:
    """One connection's header block split over a HEADERS frame and CONTINUATION frames
    (RFC 9113 4.3, 6.10), gathered with bounds: the block so far is checked against the
    decoder's limit as each frame arrives (a huge block is never buffered whole), and the
    number of CONTINUATION frames is capped (a flood of tiny ones is ENHANCE_YOUR_CALM).

    A block in one HEADERS frame (END_HEADERS) never comes here; :meth:`start` takes
    one without it, :meth:`add` each CONTINUATION frame.  While :attr:`stream_id` is not
    None any other frame is a connection error (the caller checks, on its hot path).
    """

    __slots__ = ("_decoder", "_max_frames", "stream_id", "flags", "_block", "_frames")

    def __init__(self, decoder: HeaderDecoder, max_frames: int) -> None:
        self._decoder = decoder
        self._max_frames = max_frames
        #: The stream whose block is being gathered (None: none is).
        self.stream_id: int | None = None
        #: The flags of that block's HEADERS frame (END_STREAM, ...).
        self.flags = 0
        self._block = bytearray()
        self._frames = 0

    def start(self, stream_id: int, flags: int, fragment: bytes) -> None:
        """A HEADERS frame without END_HEADERS, with its block ``fragment``."""
        self._decoder.check_block_size(len(fragment))
        self.stream_id = stream_id
        self.flags = flags
        self._block = bytearray(fragment)
        self._frames = 0

    def add(self, stream_id: int, flags: int, payload: bytes) -> bytes | None:
        """A CONTINUATION frame: the whole block once it ends (END_HEADERS), else None.
        ProtocolError for a CONTINUATION frame that continues nothing, or one too many."""
        if self.stream_id is None or stream_id != self.stream_id:
            raise ProtocolError("unexpected CONTINUATION frame")
        block = self._block
        block += payload
        self._frames += 1
        self._decoder.check_block_size(len(block))
        if self._frames > self._max_frames:
            raise ProtocolError("too many CONTINUATION frames", ENHANCE_YOUR_CALM)
        if not flags & END_HEADERS:
            return None
        self.stream_id = None
        self._block = bytearray()
        return bytes(block)


def parse_timeout(value: bytes) -> float | None:
    """Seconds of a ``grpc-timeout`` value (``<digits><unit>``); None when malformed."""
    text = value.decode("ascii", "replace")
    unit = _TIMEOUT_UNITS.get(text[-1:])
    digits = text[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


_UNRESERVED: Final = frozenset(range(0x20, 0x7F)) - {ord("%")}


def encode_grpc_message(message: str) -> bytes:
    """``grpc-message``: UTF-8, percent-encoding every byte outside 0x20-0x7E and '%'."""
    raw = message.encode("utf-8")
    if all(b in _UNRESERVED for b in raw):
        return raw
    return b"".join(bytes([b]) if b in _UNRESERVED else b"%%%02X" % b for b in raw)
