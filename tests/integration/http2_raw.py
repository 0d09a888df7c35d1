"""Raw HTTP/2 for the transport's tests: a blocking frame-level client, and peak-RSS
probes for the flood tests.

Real clients (grpcio, tritonclient, ``h2``) never send what these tests need to send
(CONTINUATION floods, zero window updates, resets in the same write as the call), so
the hostile tests speak frames themselves with this client.
"""

from __future__ import annotations

import socket
from pathlib import Path

import hpack

from openeas.protocol import http2 as h2
from openeas.testing.onnx_models import write_identity_model, write_model_config

INFER = "/inference.GRPCInferenceService/ModelInfer"
LIVE = "/inference.GRPCInferenceService/ServerLive"
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"


def message(payload: bytes) -> bytes:
    """A gRPC length-prefixed, uncompressed message."""
    return h2.MESSAGE_HEADER.pack(0, len(payload)) + payload


class RawClient:
    """A blocking HTTP/2 client that speaks frames, for what real clients rarely send."""

    def __init__(self, port: int, settings: dict[int, int] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buffer = b""
        self.sock.sendall(h2.PREFACE + h2.settings_frame(settings or {}))

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def headers_block(self, path: str, **extra: str) -> bytes:
        headers = [
            (":method", extra.pop("method", "POST")),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", extra.pop("content_type", "application/grpc")),
            ("te", "trailers"),
            *extra.items(),
        ]
        return self.encoder.encode(headers)

    def read_frame(self) -> tuple[int, int, int, bytes]:
        while True:
            if len(self.buffer) >= 9:
                high, low, kind, flags, stream_id = h2.FRAME_HEADER.unpack_from(self.buffer)
                size = (high << 8) | low
                if len(self.buffer) >= 9 + size:
                    payload = self.buffer[9 : 9 + size]
                    self.buffer = self.buffer[9 + size :]
                    return kind, flags, stream_id, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk

    def response(self, stream_id: int) -> tuple[dict[str, str], bytes]:
        """Headers (incl. trailers) and DATA of ``stream_id`` up to END_STREAM.

        Answers the server's SETTINGS and skips frames of other streams.
        """
        headers: dict[str, str] = {}
        data = b""
        while True:
            kind, flags, sid, payload = self.read_frame()
            if kind == h2.SETTINGS and not flags & h2.ACK:
                self.send(h2.frame(h2.SETTINGS, h2.ACK, 0))
            if sid != stream_id:
                continue
            if kind == h2.HEADERS:
                headers.update((n, v) for n, v in self.decoder.decode(payload))
            elif kind == h2.DATA:
                data += payload
            elif kind == h2.RST_STREAM:
                headers["rst"] = str(h2.read_u32(payload))
                return headers, data
            if flags & h2.END_STREAM:
                return headers, data

    def goaway(self) -> int:
        """Read until the server's GOAWAY; its error code (ConnectionError if it closes
        without one)."""
        while True:
            kind, _, _, payload = self.read_frame()
            if kind == h2.GOAWAY:
                return h2.read_u32(payload, 4)

    def flood(self, frame: bytes, total_bytes: int, timeout: float = 3.0) -> int:
        """Send ``frame`` over and over, never reading, until ``total_bytes`` went out,
        the server stops reading (a send blocks ``timeout`` s) or it closes; bytes sent."""
        batch = memoryview(frame * max(1, 65536 // len(frame)))
        sent = pos = 0
        self.sock.settimeout(timeout)
        try:
            while sent < total_bytes:
                count = self.sock.send(batch[pos:])  # may be partial: frames stay whole
                sent += count
                pos = (pos + count) % len(batch)
        except (TimeoutError, OSError):
            pass
        finally:
            self.sock.settimeout(10)
        return sent


# -- memory --------------------------------------------------------------------------------


def reset_peak_rss(pid: int) -> int:
    """Reset the process's peak RSS (Linux's VmHWM) to its current RSS; that, in bytes."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kb(pid, "VmRSS") * 1024


def peak_rss(pid: int) -> int:
    """The process's peak RSS since the last :func:`reset_peak_rss`, in bytes."""
    return _status_kb(pid, "VmHWM") * 1024


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def write_identity_repository(repository: Path) -> None:
    """An ONNX ``identity`` model (FP32 INPUT0 -> OUTPUT0, any length, no batching)."""
    write_identity_model(repository / "identity" / "1", "FP32", (-1,))
    write_model_config(
        repository / "identity",
        """
name: "identity"
backend: "onnxruntime"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
""",
    )
