"""Access keys and request signing for the control-plane API.

A request carries ``X-OpenEAS-Date`` (Unix seconds), ``X-OpenEAS-Nonce`` (a fresh random
string per request, as Alibaba Cloud's ``SignatureNonce``) and
``Authorization: OEAS-HMAC-SHA256 <access key id>:<signature>``, where the signature is
the hex HMAC-SHA256, keyed by the access key secret, of
``METHOD\\nPATH?QUERY\\nDATE\\nNONCE\\nSHA256(BODY)``.  The secret never travels.

A request is accepted when its date is at most :data:`MAX_AGE_SECONDS` old and at most
:data:`MAX_AHEAD_SECONDS` ahead of the server's clock, and its nonce was not seen within
that window: a captured request cannot be replayed.  Alibaba Cloud allows 15 minutes each
way; its clients are anywhere on the Internet, ours are NTP-synchronised machines next to
the platform, so a narrower window keeps a captured request useful for less time and
bounds the nonces to remember (see :class:`NonceCache`).

The admin key pair is created on the platform's first start in
``$OPENEAS_HOME/credentials`` (JSON, mode 0600), where ``eascmd`` on the same machine finds
it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from openeas.home import openeas_home
from openeas.platform.errors import AuthError, PlatformError

SCHEME = "OEAS-HMAC-SHA256"
DATE_HEADER = "X-OpenEAS-Date"
NONCE_HEADER = "X-OpenEAS-Nonce"
#: how old a signed request may be (its nonce is remembered this long)
MAX_AGE_SECONDS = 300
#: how far ahead of the server's clock a request's date may be
MAX_AHEAD_SECONDS = 60
#: at most this many nonces are remembered; beyond, requests are refused until some expire
MAX_NONCES = 200_000
_NONCE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


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
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = AccessKey("OEAS" + secrets.token_hex(8).upper(), random_token(30))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"access_key_id": key.id, "access_key_secret": key.secret}, handle)
    return key


def gateway_credential_path() -> Path:
    return openeas_home() / "gateway-credential"


def load_or_create_gateway_token(path: Path | None = None) -> str:
    """The gateway credential: a bearer token that reads the route watch (and nothing
    else), created (mode 0600, JSON ``{"token": ...}``) when the file does not exist yet.
    A gateway on another machine gets a copy of this file (see docs/gateway.md)."""
    path = path or gateway_credential_path()
    if path.exists():
        return str(json.loads(path.read_text())["token"])
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = random_token(30)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"token": token}, handle)
    return token


def verify_bearer(headers: dict[str, str], token: str) -> None:
    """AuthError unless ``headers`` carry ``Authorization: Bearer <token>``."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), token):
        raise AuthError("the route watch requires the gateway credential (Authorization: Bearer)")


def load_key(path: Path) -> AccessKey:
    doc = json.loads(path.read_text())
    return AccessKey(doc["access_key_id"], doc["access_key_secret"])


class ReplayError(AuthError):
    code = "ReplayedRequest"


class TooManyNoncesError(PlatformError):
    status = 429
    code = "TooManyRequests"


class NonceCache:
    """The nonces of the accepted requests of the last :data:`MAX_AGE_SECONDS`.

    A nonce is kept until its request's date leaves the window (then the date check
    refuses a replay by itself), so memory is bounded by the request rate times the
    window, and by ``capacity`` whatever the rate.
    """

    def __init__(self, capacity: int = MAX_NONCES) -> None:
        self.capacity = capacity
        #: nonce -> when it may be forgotten, in insertion order
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def _expire(self, now: float) -> None:
        # Expiry times are nearly in insertion order (dates within the window); stop at
        # the first one still valid, the rest go on later calls.
        while self._expiry:
            nonce, until = next(iter(self._expiry.items()))
            if until > now:
                break
            del self._expiry[nonce]

    def remember(self, nonce: str, date: int, now: float) -> None:
        """Record ``nonce``; :class:`ReplayError` when it was used within the window."""
        self._expire(now)
        if nonce in self._expiry:
            raise ReplayError(f"request replayed: nonce {nonce!r} was already used")
        if len(self._expiry) >= self.capacity:
            raise TooManyNoncesError("too many signed requests in the last minutes; retry later")
        self._expiry[nonce] = date + MAX_AGE_SECONDS + 1


def new_nonce() -> str:
    return secrets.token_hex(16)


def string_to_sign(method: str, target: str, date: str, nonce: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{target}\n{date}\n{nonce}\n{digest}".encode()


def sign(
    key: AccessKey,
    method: str,
    target: str,
    body: bytes,
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that authenticate one request (``target`` = path plus ``?query``);
    a fresh nonce unless one is given."""
    date = str(int(now if now is not None else time.time()))
    nonce = nonce or new_nonce()
    mac = hmac.new(key.secret.encode(), string_to_sign(method, target, date, nonce, body), "sha256")
    return {
        DATE_HEADER: date,
        NONCE_HEADER: nonce,
        "Authorization": f"{SCHEME} {key.id}:{mac.hexdigest()}",
    }


def _check_date(headers: dict[str, str], now: float) -> int:
    date = headers.get(DATE_HEADER.lower(), "")
    try:
        when = int(date)
    except ValueError:
        raise AuthError(f"missing or malformed {DATE_HEADER} header") from None
    if now - when > MAX_AGE_SECONDS:
        raise AuthError(
            f"request date is {int(now - when)}s behind the server's clock "
            f"(at most {MAX_AGE_SECONDS}s allowed)"
        )
    if when - now > MAX_AHEAD_SECONDS:
        raise AuthError(
            f"request date is {int(when - now)}s ahead of the server's clock "
            f"(at most {MAX_AHEAD_SECONDS}s allowed)"
        )
    return when


def verify(
    keys: dict[str, AccessKey],
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes,
    now: float | None = None,
    nonces: NonceCache | None = None,
) -> AccessKey:
    """The key that signed the request; :class:`AuthError` when the signature is bad or,
    given ``nonces``, when the request was seen before."""
    auth = headers.get("authorization", "")
    scheme, _, credential = auth.partition(" ")
    if scheme != SCHEME or ":" not in credential:
        raise AuthError(f"missing or malformed Authorization header (expected {SCHEME})")
    key_id, _, signature = credential.partition(":")
    key = keys.get(key_id)
    if key is None:
        raise AuthError(f"unknown access key id {key_id!r}")
    now = now if now is not None else time.time()
    date = _check_date(headers, now)
    nonce = headers.get(NONCE_HEADER.lower(), "")
    if not _NONCE_PATTERN.match(nonce):
        raise AuthError(f"missing or malformed {NONCE_HEADER} header (16-64 of [A-Za-z0-9_-])")
    text = string_to_sign(method, target, headers[DATE_HEADER.lower()], nonce, body)
    expected = hmac.new(key.secret.encode(), text, "sha256")
    if not hmac.compare_digest(expected.hexdigest(), signature):
        raise AuthError("signature does not match (wrong access key secret?)")
    if nonces is not None:  # only a genuine request may take a nonce
        nonces.remember(nonce, date, now)
    return key
