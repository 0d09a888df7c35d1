"""Access keys and request signatures of the control-plane API."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from openeas.platform.auth import (
    DATE_HEADER,
    MAX_AGE_SECONDS,
    NONCE_HEADER,
    AccessKey,
    NonceCache,
    ReplayError,
    TooManyNoncesError,
    load_or_create_admin_key,
    random_token,
    sign,
    verify,
)
from openeas.platform.errors import AuthError
from openeas.platform.resources import Demand, ResourceGroup, pick_cores, shortage
from openeas.platform.spec import generate_token

KEY = AccessKey("AKID", "secret-value")
KEYS = {KEY.id: KEY}


def _headers(key: AccessKey, body: bytes = b"{}", now: float = 1000.0) -> dict[str, str]:
    return {k.lower(): v for k, v in sign(key, "POST", "/api/v1/services", body, now).items()}


def test_a_signed_request_verifies_and_the_secret_is_not_sent() -> None:
    headers = _headers(KEY)
    assert KEY.secret not in "".join(headers.values())
    assert verify(KEYS, "POST", "/api/v1/services", headers, b"{}", now=1000.0) == KEY


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: h.pop("authorization"), "missing or malformed Authorization"),
        (lambda h: h.update(authorization="Bearer x"), "missing or malformed Authorization"),
        (
            lambda h: h.update(authorization=h["authorization"].replace("AKID", "OTHER")),
            "unknown access key",
        ),
        (lambda h: h.pop(DATE_HEADER.lower()), DATE_HEADER),
        (lambda h: h.update({DATE_HEADER.lower(): "1061"}), "61s ahead of the server's clock"),
        (lambda h: h.update({DATE_HEADER.lower(): "699"}), "301s behind the server's clock"),
        (lambda h: h.pop(NONCE_HEADER.lower()), NONCE_HEADER),
        (lambda h: h.update({NONCE_HEADER.lower(): "short"}), NONCE_HEADER),
        (lambda h: h.update({NONCE_HEADER.lower(): "b" * 32}), "signature"),
    ],
)
def test_bad_headers_are_rejected(change, message: str) -> None:  # type: ignore[no-untyped-def]
    headers = _headers(KEY)
    change(headers)
    with pytest.raises(AuthError, match=message):
        verify(KEYS, "POST", "/api/v1/services", headers, b"{}", now=1000.0)


def test_the_window_is_five_minutes_back_and_one_minute_ahead() -> None:
    for now in (1000.0 - 60, 1000.0 + 300):
        headers = _headers(KEY)
        assert verify(KEYS, "POST", "/api/v1/services", headers, b"{}", now=now) == KEY


def test_a_replayed_request_is_refused_until_its_date_leaves_the_window() -> None:
    nonces = NonceCache()
    headers = _headers(KEY)
    verify(KEYS, "POST", "/api/v1/services", headers, b"{}", now=1000.0, nonces=nonces)
    with pytest.raises(ReplayError, match="replayed"):
        verify(KEYS, "POST", "/api/v1/services", headers, b"{}", now=1200.0, nonces=nonces)
    assert ReplayError.status == 401
    # Once the date is out of the window the date check refuses it; the nonce is dropped.
    with pytest.raises(AuthError, match="behind"):
        verify(KEYS, "POST", "/api/v1/services", headers, b"{}", now=1400.0, nonces=nonces)
    fresh = _headers(KEY, now=1400.0)
    verify(KEYS, "POST", "/api/v1/services", fresh, b"{}", now=1400.0, nonces=nonces)
    assert len(nonces) == 1
    # Every signature carries a new nonce.
    assert fresh[NONCE_HEADER.lower()] != _headers(KEY, now=1400.0)[NONCE_HEADER.lower()]


def test_a_forged_request_does_not_use_up_a_nonce() -> None:
    nonces = NonceCache()
    headers = _headers(KEY)
    forged = {
        **_headers(AccessKey("AKID", "guessed")),
        NONCE_HEADER.lower(): headers[NONCE_HEADER.lower()],
    }
    with pytest.raises(AuthError, match="signature"):
        verify(KEYS, "POST", "/api/v1/services", forged, b"{}", now=1000.0, nonces=nonces)
    verify(KEYS, "POST", "/api/v1/services", headers, b"{}", now=1000.0, nonces=nonces)


def test_the_nonce_memory_is_bounded() -> None:
    nonces = NonceCache(capacity=3)
    for i in range(3):
        nonces.remember(f"nonce-{i:012d}", 1000, 1000.0)
    with pytest.raises(TooManyNoncesError) as caught:
        nonces.remember("nonce-overflow-0", 1000, 1000.0)
    assert caught.value.status == 429
    nonces.remember("nonce-overflow-0", 1400, 1000.0 + MAX_AGE_SECONDS + 1)
    assert len(nonces) == 1


def test_tampering_breaks_the_signature() -> None:
    headers = _headers(KEY)
    with pytest.raises(AuthError, match="signature"):
        verify(KEYS, "POST", "/api/v1/services", headers, b'{"x": 1}', now=1000.0)
    with pytest.raises(AuthError, match="signature"):
        verify(KEYS, "DELETE", "/api/v1/services", headers, b"{}", now=1000.0)
    forged = _headers(AccessKey("AKID", "guessed"))
    with pytest.raises(AuthError, match="signature"):
        verify(KEYS, "POST", "/api/v1/services", forged, b"{}", now=1000.0)


def test_admin_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "home" / "credentials"
    key = load_or_create_admin_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_admin_key(path) == key
    assert len(key.secret) >= 32


def test_capacity_shortage_and_core_placement() -> None:
    group = ResourceGroup("default", cpu=4, memory=1000, gpu=0)
    assert shortage(group, [Demand(2, 500, 0)], Demand(2, 500, 0)) is None
    assert "insufficient cpu" in (shortage(group, [Demand(3, 0, 0)], Demand(2, 0, 0)) or "")
    assert "insufficient memory" in (shortage(group, [Demand(1, 900, 0)], Demand(1, 200, 0)) or "")
    assert "insufficient gpu" in (shortage(group, [], Demand(1, 0, 1)) or "")
    first = pick_cores(1, [])
    assert len(first) == 1
    second = pick_cores(1, [first])
    import os

    if len(os.sched_getaffinity(0)) > 1:
        assert second != first  # the least-used core
    assert pick_cores(10_000, []) == sorted(os.sched_getaffinity(0))


def test_generated_secrets_never_start_with_a_dash() -> None:
    # a leading "-" makes `--token <value>` read the value as a flag; 1 in 64 would have one
    tokens = [random_token(32) for _ in range(3000)] + [generate_token() for _ in range(3000)]
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == len(tokens)
    assert {len(random_token(32)), len(generate_token())} == {43}
