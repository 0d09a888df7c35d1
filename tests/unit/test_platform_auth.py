"""Access keys and request signatures of the control-plane API."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from openeas.platform.auth import (
    DATE_HEADER,
    AccessKey,
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
        (lambda h: h.update({DATE_HEADER.lower(): "5000"}), "away from the server's clock"),
    ],
)
def test_bad_headers_are_rejected(change, message: str) -> None:  # type: ignore[no-untyped-def]
    headers = _headers(KEY)
    change(headers)
    with pytest.raises(AuthError, match=message):
        verify(KEYS, "POST", "/api/v1/services", headers, b"{}", now=1000.0)


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
