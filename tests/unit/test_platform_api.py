"""The control-plane API's answers to replays and to internal errors (in-process ASGI)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from openeas.platform.api import create_app
from openeas.platform.auth import AccessKey, sign
from openeas.platform.errors import error_from_json

KEY = AccessKey("AKID", "secret-value")


class _BrokenControl:
    """A control plane whose store fails, as a bug or a broken database would."""

    def list(self) -> list[dict[str, Any]]:
        raise RuntimeError("database disk image is malformed")

    def resources(self) -> list[dict[str, Any]]:
        return []


def _client() -> TestClient:
    app = create_app(_BrokenControl(), {KEY.id: KEY})  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False)


def test_an_internal_error_answers_the_platforms_json_error() -> None:
    client = _client()
    response = client.get("/api/v1/services", headers=sign(KEY, "GET", "/api/v1/services", b""))
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "InternalError"
    assert "RuntimeError: database disk image is malformed" in body["message"]
    assert "database disk image is malformed" in str(error_from_json(500, body))


def test_a_replayed_request_is_refused_with_401() -> None:
    client = _client()
    headers = sign(KEY, "GET", "/api/v1/resources", b"")
    assert client.get("/api/v1/resources", headers=headers).status_code == 200
    replay = client.get("/api/v1/resources", headers=headers)
    assert replay.status_code == 401
    assert replay.json()["code"] == "ReplayedRequest"
    assert "replayed" in replay.json()["message"]
    fresh = sign(KEY, "GET", "/api/v1/resources", b"")
    assert client.get("/api/v1/resources", headers=fresh).status_code == 200


def test_the_route_watch_waits_for_the_first_pass_and_takes_the_gateway_credential() -> None:
    """Before the reconciler's first pass a snapshot would miss services (a gateway would
    answer 404 for them): 503 until then, and the gateway keeps what it has."""
    from openeas.gateway.routes import RouteTable, ServiceRoute
    from openeas.platform.routefeed import RouteFeed

    routes = RouteTable()
    feed = RouteFeed(routes)
    app = create_app(_BrokenControl(), {KEY.id: KEY}, feed=feed, gateway_token="gw-secret")  # type: ignore[arg-type]
    client = TestClient(app)
    bearer = {"Authorization": "Bearer gw-secret"}
    path = "/api/v1/gateway/routes"
    assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    not_yet = client.get(path, headers=bearer)
    assert not_yet.status_code == 503 and not_yet.json()["code"] == "NotReady"
    routes.update(ServiceRoute("svc", "tok"))
    feed.ready = True
    answer = client.get(path, headers=bearer).json()
    assert answer["version"] == feed.version and answer["services"][0]["token"] == "tok"
    signed = client.get(path, headers=sign(KEY, "GET", path, b""))  # the admin key too
    assert signed.status_code == 200
    # The credential reads routes, nothing else.
    assert client.get("/api/v1/resources", headers=bearer).status_code == 401
