"""HTTP on a Unix-domain socket, next to TCP (``--http-unix-socket``).

The gateway reaches instances on the same machine this way: a loopback TCP round trip
costs both processes about twice the kernel time of a Unix-socket one, and the gateway's
extra hop is mostly that kernel time.  ``@name`` is a name in Linux's abstract socket
namespace (no file to clean up, no path-length trouble); anything else is a path.
"""

from __future__ import annotations

import os
import socket
import stat

from openeas.server.frontends.httpserver import HttpServer


def socket_address(name: str) -> str:
    """The ``bind``/``connect`` address of ``name`` (``@x`` -> abstract ``\\0x``)."""
    return "\0" + name[1:] if name.startswith("@") else name


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
    try:
        sock.bind(socket_address(name))
    except OSError as exc:
        sock.close()
        raise OSError(f"failed to bind unix socket {name}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class UnixHttpServer:
    """An :class:`HttpServer` on a Unix-domain socket (removes its file on stop)."""

    port = 0

    def __init__(self, server: HttpServer, name: str) -> None:
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
