"""Server-side TLS settings shared by the processor's gRPC port and the gateway's ports.

One way to build a listener's :class:`ssl.SSLContext`: TLS 1.2 or newer, the server's
certificate chain and key from PEM files, the protocols it offers by ALPN (``h2`` on a
gRPC port, ``http/1.1`` on an HTTP one), and optionally the CA bundle that client
certificates must chain to (mutual TLS).  A file that cannot be read or does not hold
what it should raises :class:`TlsFileError` naming the file; the caller, which knows the
flag the file came from, adds the flag's name.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

#: ALPN ids (RFC 7301): what a gRPC port and an HTTP/1.1 port speak.
ALPN_H2 = "h2"
ALPN_HTTP1 = "http/1.1"


class TlsFileError(OSError):
    """A certificate, key or CA file that cannot be used (the message names it).

    :attr:`what` says which argument of :func:`server_context` was at fault:
    ``"cert"`` (the certificate or its key) or ``"client_ca"``.
    """

    def __init__(self, what: str, message: str) -> None:
        super().__init__(message)
        self.what = what


def server_context(
    cert: str, key: str, alpn: Sequence[str], client_ca: str | None = None
) -> ssl.SSLContext:
    """A server context for ``cert``/``key`` offering ``alpn``; with ``client_ca``,
    clients must present a certificate signed by it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(alpn))
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsFileError(
            "cert", f"cannot load the TLS certificate '{cert}' with key '{key}': {exc}"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsFileError(
                "client_ca", f"cannot load the root certificate '{client_ca}': {exc}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
