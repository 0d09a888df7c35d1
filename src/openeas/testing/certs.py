"""Certificates for TLS tests, made with the ``openssl`` command line.

:func:`make_certificates` writes a CA (``ca.pem``/``ca.key``), a server certificate for
``127.0.0.1`` and ``localhost`` (``server.pem``/``server.key``) and a client certificate
(``client.pem``/``client.key``), both signed by the CA, valid for two days.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

#: Whether the ``openssl`` command is there (tests that need it skip otherwise).
HAVE_OPENSSL = shutil.which("openssl") is not None


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed(name: str, cn: str, extensions: str, cwd: Path) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj",
             f"/CN={cn}", "-out", f"{name}.csr", cwd=cwd)  # fmt: skip
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out",
             f"{name}.pem", cwd=cwd)  # fmt: skip


def make_certificates(directory: Path) -> Path:
    """Write the CA, server and client certificates into ``directory``; return it."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-subj",
             "/CN=openeas test CA", "-days", "2", "-out", "ca.pem", cwd=directory)  # fmt: skip
    _signed("server", "localhost", "subjectAltName=IP:127.0.0.1,DNS:localhost\n", directory)
    _signed("client", "client", "extendedKeyUsage=clientAuth\n", directory)
    return directory
