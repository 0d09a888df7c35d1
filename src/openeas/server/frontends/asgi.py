"""Small helpers for raw ASGI applications (no framework on the hot path)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from openeas.protocol.errors import InferenceError, ResourceExhausted

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a (lower-case) request header."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; ResourceExhausted past ``limit`` bytes."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise too_large(len(body), limit)
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(size: int, limit: int) -> ResourceExhausted:
    """The error for a request body over the maximum input size."""
    return ResourceExhausted(
        f"request body of at least {size} bytes exceeds the maximum input size of {limit} "
        "bytes (--http-max-input-size)"
    )


async def send_response(
    send: Send,
    status: int,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*(headers or []), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, value: Any, status: int = 200) -> None:
    await send_response(send, status, orjson.dumps(value), JSON_HEADERS)


async def send_error(send: Send, error: InferenceError, status: int | None = None) -> None:
    await send_json(send, {"error": error.message}, status or error.http_status)
