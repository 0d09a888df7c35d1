"""Running ASGI apps on uvicorn (httptools + uvloop) inside our own event loop.

We bind the sockets ourselves so that a port in use is a clear start-up error, and we
handle SIGTERM/SIGINT ourselves so that shutdown drains every front end in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # signals are the process's business
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; OSError names the address when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"failed to bind {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class AsgiServer:
    """One uvicorn server for one ASGI app on one pre-bound socket."""

    def __init__(self, app: Any, sock: socket.socket, graceful_timeout: float) -> None:
        config = uvicorn.Config(
            app,
            loop="none",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_keep_alive=75,
            timeout_graceful_shutdown=graceful_timeout,
            backlog=2048,
        )
        self._server = _Server(config)
        self._sock = sock
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._server.serve([self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("server exited during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the graceful timeout)."""
        self._server.should_exit = True
        if self._task:
            await self._task
