"""Listening and connected sockets: TCP, and Unix-domain sockets next to TCP.

A server may serve HTTP on a Unix-domain socket too (``--http-unix-socket``), and then
gRPC on a second one named after it (:func:`grpc_unix_socket`).  The gateway reaches
instances on the same machine this way: a loopback TCP round trip costs both processes
about twice the kernel time of a Unix-socket one, and the gateway's extra hop is mostly
that kernel time.  ``@name`` is a name in Linux's abstract socket namespace (no file to
clean up, no path-length trouble); anything else is a path.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

_P = TypeVar("_P", bound=asyncio.BaseProtocol)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; OSError names the address when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return _listen(sock, (host, port), f"{host}:{port}")


def _listen(sock: socket.socket, address: Any, where: str) -> socket.socket:
    """``sock`` bound to ``address`` and listening, non-blocking; closed, and OSError
    naming ``where``, when it cannot be bound."""
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"failed to bind {where}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Turn Nagle's algorithm off on a TCP transport (each answer is one complete write)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def socket_address(name: str) -> str:
    """The ``bind``/``connect`` address of ``name`` (``@x`` -> abstract ``\\0x``)."""
    return "\0" + name[1:] if name.startswith("@") else name


def grpc_unix_socket(http_unix_socket: str) -> str:
    """The Unix socket a server with ``--http-unix-socket=NAME`` serves gRPC on."""
    return http_unix_socket + ".grpc"


def bind_unix_socket(name: str) -> socket.socket:
    """A listening Unix-domain socket; OSError names it when it cannot be bound.

    A stale socket file left by a process that died is replaced; any other file is not.
    """
    if not name.startswith("@"):
        try:
            if stat.S_ISSOCK(os.stat(name).st_mode):
                os.unlink(name)
        except FileNotFoundError:
            pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    return _listen(sock, socket_address(name), f"unix socket {name}")


async def connect_unix(
    loop: asyncio.AbstractEventLoop, protocol: Callable[[], _P], name: str
) -> tuple[asyncio.BaseTransport, _P]:
    """A client connection to the Unix socket ``name`` (``@x``: abstract) speaking
    ``protocol``; OSError when nothing listens there."""
    # connected by hand: uvloop's create_unix_connection rejects abstract addresses
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, socket_address(name))
        return await loop.create_unix_connection(protocol, sock=sock)
    except BaseException:
        sock.close()
        raise


class Listener(Protocol):
    """A server started on a listening socket it was given."""

    async def start(self) -> None: ...

    async def stop(self, timeout: float) -> None: ...


class UnixHttpServer:
    """An HTTP server (:class:`Listener`) on a Unix-domain socket; removes its file on stop."""

    port = 0

    def __init__(self, server: Listener, name: str) -> None:
        self.server = server
        self.where = name

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, timeout: float) -> None:
        await self.server.stop(timeout)
        if not self.where.startswith("@"):
            try:
                os.unlink(self.where)
            except FileNotFoundError:
                pass
