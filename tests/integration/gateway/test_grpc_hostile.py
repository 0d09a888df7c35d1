"""Hostile HTTP/2 clients against the gateway's gRPC front (which runs on the
processor's transport): the token is checked on the headers, before any message is
read, and streams are bounded per connection.  The gateway runs in this process (a
thread), so peak RSS is this process's."""

from __future__ import annotations

import os
import time

from openeas.protocol import http2 as h2
from openeas.testing.gateway import GatewayThread
from tests.integration.gateway.conftest import Cluster
from tests.integration.http2_raw import (
    INFER,
    LIVE,
    RawClient,
    message,
    peak_rss,
    reset_peak_rss,
)

TOKEN = "hostile-token"
UNAUTHENTICATED = "16"
#: The most a flood may add to the peak RSS (of this process, which runs the gateway).
FLOOD_RSS_LIMIT = 64 * 1024 * 1024


def test_call_without_a_token_is_refused_on_its_headers(
    gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    """Answered before the message is sent (before: the gateway waited for the whole
    message, up to 256 MiB, and only then looked at the token)."""
    gateway.publish(service_name, TOKEN, cluster.upstreams)
    client = RawClient(gateway.grpc_port)
    try:
        for sid, token in ((1, None), (3, "wrong")):
            extra = {"x-eas-service": service_name}
            if token:
                extra["authorization"] = token
            block = client.headers_block(INFER, **extra)
            client.send(h2.frame(h2.HEADERS, h2.END_HEADERS, sid, block))  # no message yet
            headers, _ = client.response(sid)
            assert headers["grpc-status"] == UNAUTHENTICATED, headers
        block = client.headers_block(LIVE, **{"x-eas-service": service_name}, authorization=TOKEN)
        client.send(
            h2.frame(h2.HEADERS, h2.END_HEADERS, 5, block)
            + h2.frame(h2.DATA, h2.END_STREAM, 5, message(b""))
        )
        headers, _ = client.response(5)
        assert headers["grpc-status"] == "0", headers
    finally:
        client.close()


def test_bodies_without_a_token_are_not_buffered(
    gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    """3 x 100 MB messages without a token: discarded as they come (+301 MB before)."""
    gateway.publish(service_name, TOKEN, cluster.upstreams)
    pid = os.getpid()
    piece = b"\0" * (1024 * 1024 - 9)
    size = 100 * len(piece)  # a whole message of 100 MB, in 100 DATA frames
    base = reset_peak_rss(pid)
    client = RawClient(gateway.grpc_port)
    try:
        block = client.headers_block(INFER, **{"x-eas-service": service_name})
        for sid in (1, 3, 5):
            client.send(h2.frame(h2.HEADERS, h2.END_HEADERS, sid, block))
            client.send(h2.frame(h2.DATA, 0, sid, h2.MESSAGE_HEADER.pack(0, size)))
            frame = h2.frame(h2.DATA, 0, sid, piece)
            for _ in range(99):
                client.send(frame)
            client.send(h2.frame(h2.DATA, h2.END_STREAM, sid, piece))
            headers, _ = client.response(sid)
            assert headers["grpc-status"] == UNAUTHENTICATED
    finally:
        client.close()
    assert peak_rss(pid) - base < FLOOD_RSS_LIMIT


def test_streams_beyond_the_limit_are_refused(
    gateway: GatewayThread, cluster: Cluster, service_name: str
) -> None:
    """Admitted calls that never send their message: 30k of them (+100 MB for 200k
    before) end at SETTINGS_MAX_CONCURRENT_STREAMS."""
    gateway.publish(service_name, TOKEN, cluster.upstreams)
    pid = os.getpid()
    base = reset_peak_rss(pid)
    client = RawClient(gateway.grpc_port)
    try:
        extra = {"x-eas-service": service_name, "authorization": TOKEN}
        first = client.headers_block(INFER, **extra)
        indexed = client.headers_block(INFER, **extra)
        burst = h2.frame(h2.HEADERS, h2.END_HEADERS, 1, first) + b"".join(
            h2.frame(h2.HEADERS, h2.END_HEADERS, sid, indexed) for sid in range(3, 60001, 2)
        )
        client.flood(burst, len(burst), timeout=5)
        refused = 0
        deadline = time.monotonic() + 20
        while refused < 100 and time.monotonic() < deadline:
            kind, _, _, payload = client.read_frame()
            if kind == h2.RST_STREAM and h2.read_u32(payload) == h2.REFUSED_STREAM:
                refused += 1
        assert refused == 100
    finally:
        client.close()
    assert peak_rss(pid) - base < FLOOD_RSS_LIMIT


def test_header_block_of_table_size_updates_is_refused_at_once(gateway: GatewayThread) -> None:
    """~1 MB of HPACK size updates, unauthenticated: refused before decoding (the loop
    stalled ~7 s before)."""
    client = RawClient(gateway.grpc_port)
    try:
        started = time.monotonic()
        client.send(h2.frame(h2.HEADERS, h2.END_HEADERS, 1, b"\x3f\xe1\x1f" * 300_000))
        assert client.goaway() == h2.COMPRESSION_ERROR
        assert time.monotonic() - started < 2
    finally:
        client.close()
