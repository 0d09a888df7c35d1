"""Access keys and request signing for the control-plane API.

A request carries ``X-OpenEAS-Date`` (Unix seconds) and
``Authorization: OEAS-HMAC-SHA256 <access key id>:<signature>``, where the signature is
the hex HMAC-SHA256, keyed by the access key secret, of
``METHOD\\nPATH?QUERY\\nDATE\\nSHA256(BODY)``.  The secret never travels; a signature is
valid for :data:`MAX_SKEW_SECONDS` around the server's clock.

The admin key pair is created on the platform's first start in
``$OPENEAS_HOME/credentials`` (JSON, mode 0600), where ``eascmd`` on the same machine finds
it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from openeas.home import openeas_home
from openeas.platform.errors import AuthError

SCHEME = "OEAS-HMAC-SHA256"
DATE_HEADER = "X-OpenEAS-Date"
MAX_SKEW_SECONDS = 900


@dataclass(frozen=True)
class AccessKey:
    id: str
    secret: str


def random_token(nbytes: int) -> str:
    """``nbytes`` random bytes as url-safe base64, never starting with ``-`` (a secret
    passed after a command-line flag would be read as another flag)."""
    while True:
        token = secrets.token_urlsafe(nbytes)
        if not token.startswith("-"):
            return token


def credentials_path() -> Path:
    return openeas_home() / "credentials"


def load_or_create_admin_key(path: Path | None = None) -> AccessKey:
    """The admin key pair, created (mode 0600) when the file does not exist yet."""
    path = path or credentials_path()
    if path.exists():
        return load_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = AccessKey("OEAS" + secrets.token_hex(8).upper(), random_token(30))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"access_key_id": key.id, "access_key_secret": key.secret}, handle)
    return key


def load_key(path: Path) -> AccessKey:
    doc = json.loads(path.read_text())
    return AccessKey(doc["access_key_id"], doc["access_key_secret"])


def string_to_sign(method: str, target: str, date: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{target}\n{date}\n{digest}".encode()


def sign(
    key: AccessKey, method: str, target: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """The headers that authenticate one request (``target`` = path plus ``?query``)."""
    date = str(int(now if now is not None else time.time()))
    mac = hmac.new(key.secret.encode(), string_to_sign(method, target, date, body), "sha256")
    return {DATE_HEADER: date, "Authorization": f"{SCHEME} {key.id}:{mac.hexdigest()}"}


def verify(
    keys: dict[str, AccessKey],
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes,
    now: float | None = None,
) -> AccessKey:
    """The key that signed the request; :class:`AuthError` when the signature is bad."""
    auth = headers.get("authorization", "")
    scheme, _, credential = auth.partition(" ")
    if scheme != SCHEME or ":" not in credential:
        raise AuthError(f"missing or malformed Authorization header (expected {SCHEME})")
    key_id, _, signature = credential.partition(":")
    key = keys.get(key_id)
    if key is None:
        raise AuthError(f"unknown access key id {key_id!r}")
    date = headers.get(DATE_HEADER.lower(), "")
    try:
        skew = abs((now if now is not None else time.time()) - int(date))
    except ValueError:
        raise AuthError(f"missing or malformed {DATE_HEADER} header") from None
    if skew > MAX_SKEW_SECONDS:
        raise AuthError(f"request date is {int(skew)}s away from the server's clock")
    expected = hmac.new(key.secret.encode(), string_to_sign(method, target, date, body), "sha256")
    if not hmac.compare_digest(expected.hexdigest(), signature):
        raise AuthError("signature does not match (wrong access key secret?)")
    return key
