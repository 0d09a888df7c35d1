"""The control plane's REST API (FastAPI; OpenAPI document at ``/openapi.json``).

Every ``/api/v1`` route requires a request signed with an access key (see
:mod:`openeas.platform.auth`); ``/healthz``, ``/metrics``, the OpenAPI document and the
web console's files (``/console/``, :mod:`openeas.platform.console`, which signs its API
calls in the browser) are open.  Errors answer ``{"code", "message"[, "errors"]}`` with
the error type's status.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import BaseModel

from openeas import __version__
from openeas.platform import console
from openeas.platform.auth import AccessKey, NonceCache, verify, verify_bearer
from openeas.platform.control import ControlPlane
from openeas.platform.errors import FieldError, NotFoundError, PlatformError
from openeas.platform.routefeed import RouteFeed
from openeas.platform.spec import ELASTIC_FIELDS, parse_spec_text
from openeas.platform.status import ServiceStatus
from openeas.platform.traffic import MAX_REPORT_BYTES, ReportError, TrafficBook, parse_report

PREFIX = "/api/v1"


class UpdateBody(BaseModel):
    """``PUT /services/{name}``: a partial (merge) or complete (replace) spec."""

    spec: dict[str, Any]
    mode: str = "merge"


class SwitchBody(BaseModel):
    version: int


async def _json_body(request: Request) -> Any:
    body = await request.body()
    return parse_spec_text(body.decode(errors="replace") or "null")


async def _scrape(url: str) -> bytes:
    """Another process's metrics page; empty when it does not answer (a restarting
    gateway must not fail the control plane's page)."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            response = await client.get(url)
    except httpx.HTTPError:
        return b""
    return response.content if response.status_code == 200 else b""


class NotReadyError(PlatformError):
    status = 503
    code = "NotReady"


def _gateway_auth(token: str | None, signed: Any) -> Any:
    """The dependency of the gateways' endpoints: the gateway credential as a bearer
    token, or a request signed with an access key."""

    async def authenticate(request: Request) -> None:
        if token is not None and request.headers.get("authorization", "").startswith("Bearer "):
            verify_bearer(dict(request.headers), token)
        else:
            await signed(request)

    return authenticate


def _route_watch(app: FastAPI, feed: RouteFeed, authenticate: Any) -> None:
    """``GET /api/v1/gateway/routes``: see :mod:`openeas.gateway.follower`."""

    @app.get(
        PREFIX + "/gateway/routes",
        summary="The route table (a long poll with since=VERSION)",
        dependencies=[Depends(authenticate)],
    )
    async def routes(
        since: str = Query("", max_length=100),
        timeout: float = Query(0.0, ge=0),
        gateway: str = Query("", max_length=200),
    ) -> dict[str, Any]:
        if not feed.ready:
            raise NotReadyError("the control plane is starting or stopping: no routes now")
        return await feed.watch(since, timeout, gateway or "anonymous")


async def _any_json(request: Request) -> Any:
    """A JSON body of any type (the parsers name the field when it is not an object)."""
    body = await request.body()
    try:
        return json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlatformError(f"the body is not valid JSON: {exc}") from None


def _elastic_routes(api: APIRouter, control: ControlPlane) -> None:
    """``/services/{name}/autoscaler`` and ``/services/{name}/cronscaler``: GET (404
    without one), PUT the document (either EAS form; a new version, the instances keep
    running), DELETE (off; the count stays)."""
    for field in ELASTIC_FIELDS:
        get, put, delete = _elastic_handlers(control, field)
        path = f"/services/{{name}}/{field}"
        api.get(path, summary=f"A service's {field} as written")(get)
        api.put(path, summary=f"Set a service's {field} (a new version)")(put)
        api.delete(path, summary=f"Turn a service's {field} off")(delete)


def _elastic_handlers(control: ControlPlane, field: str) -> tuple[Any, Any, Any]:
    async def get(name: str) -> dict[str, Any]:
        value: dict[str, Any] | None = control.describe(name)[field]
        if value is None:
            raise NotFoundError(f"service {name!r} has no {field}")
        return value

    async def put(name: str, request: Request) -> dict[str, Any]:
        return control.set_elastic(name, field, await _any_json(request))

    async def delete(name: str) -> dict[str, Any]:
        return control.remove_elastic(name, field)

    return get, put, delete


class ReportTooLarge(PlatformError):
    status = 413
    code = "PayloadTooLarge"


async def _bounded_json(request: Request, limit: int) -> Any:
    """The request's JSON body, read up to ``limit`` bytes (413 beyond, 400 when not
    JSON)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ReportTooLarge(f"a traffic report may have at most {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ReportTooLarge(f"a traffic report may have at most {limit} bytes")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise PlatformError(f"the traffic report is not JSON: {exc}") from None


def _traffic(app: FastAPI, book: TrafficBook, authenticate: Any) -> None:
    """``POST /api/v1/gateway/traffic``: a gateway's report (see
    :mod:`openeas.platform.traffic`); ``GET``: every service's traffic now."""

    @app.post(
        PREFIX + "/gateway/traffic",
        summary="A gateway's traffic report",
        dependencies=[Depends(authenticate)],
    )
    async def report(request: Request) -> dict[str, Any]:
        doc = await _bounded_json(request, MAX_REPORT_BYTES)
        try:
            gateway, _, _ = parse_report(doc)
            book.report(gateway, doc, time.monotonic())
        except ReportError as exc:
            raise PlatformError(f"invalid traffic report: {exc}") from None
        return {"accepted": True}

    @app.get(
        PREFIX + "/gateway/traffic",
        summary="Each service's traffic as the gateways report it",
        dependencies=[Depends(authenticate)],
    )
    async def traffic() -> dict[str, Any]:
        now = time.monotonic()
        return {
            "gateways": book.gateways(now),
            "services": {
                name: dataclasses.asdict(book.sample(name, now))
                for name in sorted(book.services(now))
            },
        }


def create_app(
    control: ControlPlane,
    keys: dict[str, AccessKey],
    registries: list[CollectorRegistry] | None = None,
    feed: RouteFeed | None = None,
    gateway_token: str | None = None,
    scrape: list[str] | None = None,
    traffic: TrafficBook | None = None,
) -> FastAPI:
    """The API application over ``control``, accepting requests signed with ``keys``;
    the route watch (``feed``) and the traffic reports (into ``traffic``) take
    ``gateway_token`` as a bearer token too.  ``/metrics``
    adds the pages at the ``scrape`` URLs (the gateway process's metrics)."""
    app = FastAPI(title="OpenEAS control plane", version=__version__)
    nonces = NonceCache()

    async def authenticate(request: Request) -> None:
        body = await request.body()
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        verify(keys, request.method, target, dict(request.headers), body, nonces=nonces)

    @app.exception_handler(PlatformError)
    async def platform_error(_request: Request, exc: PlatformError) -> JSONResponse:
        return JSONResponse(exc.to_json(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        # A bug or a broken store: the client still gets the platform's JSON error shape
        # (eascmd prints the message); Starlette re-raises after this answer, so uvicorn
        # still logs the traceback.
        message = f"internal error: {type(exc).__name__}: {exc} (details in the platform log)"
        return JSONResponse({"code": "InternalError", "message": message}, status_code=500)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        text = b"".join(generate_latest(r) for r in registries or [])
        text += b"".join([await _scrape(url) for url in scrape or []])
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    api = APIRouter(prefix=PREFIX, dependencies=[Depends(authenticate)])

    @api.post("/services", summary="Create a service from its JSON spec")
    async def create(request: Request) -> dict[str, Any]:
        return control.create(await _json_body(request))

    @api.get("/services", summary="List services")
    async def list_services() -> list[dict[str, Any]]:
        return control.list()

    @api.get("/services/{name}", summary="Describe a service")
    async def describe(name: str) -> dict[str, Any]:
        return control.describe(name)

    @api.put("/services/{name}", summary="Update a service (a new version)")
    async def modify(name: str, request: Request) -> dict[str, Any]:
        doc = await _json_body(request)
        if not isinstance(doc, dict) or "spec" not in doc:
            raise PlatformError('the body must be {"spec": {...}, "mode": "merge" | "replace"}')
        body = UpdateBody.model_validate(doc)
        return control.modify(name, body.spec, body.mode)

    @api.delete("/services/{name}", summary="Delete a service")
    async def delete(name: str) -> dict[str, str]:
        control.delete(name)
        return {"name": name, "status": ServiceStatus.DELETING}

    _elastic_routes(api, control)

    @api.get("/services/{name}/versions", summary="List a service's versions")
    async def versions(name: str) -> list[dict[str, Any]]:
        return control.versions(name)

    @api.post("/services/{name}/switch", summary="Make another version current")
    async def switch(name: str, body: SwitchBody) -> dict[str, Any]:
        return control.switch(name, body.version)

    @api.post("/services/{name}/stop", summary="Stop a service's instances")
    async def stop(name: str) -> dict[str, Any]:
        return control.stop(name)

    @api.post("/services/{name}/start", summary="Start a stopped (or failed) service")
    async def start(name: str) -> dict[str, Any]:
        return control.start(name)

    @api.get("/services/{name}/instances", summary="A service's instances")
    async def instances(name: str) -> list[dict[str, Any]]:
        return control.instances(name)

    @api.get("/services/{name}/events", summary="A service's events")
    async def events(name: str, after: int = Query(0, ge=0)) -> list[dict[str, Any]]:
        return control.events(name, after)

    @api.get("/services/{name}/logs", summary="An instance's log", response_class=PlainTextResponse)
    async def logs(
        name: str,
        instance: str | None = None,
        tail: int | None = Query(None, ge=0),
        offset: int | None = Query(None, ge=0),
    ) -> PlainTextResponse:
        text, end = control.logs(name, instance, tail, offset)
        return PlainTextResponse(text, headers={"X-Log-Offset": str(end)})

    @api.put("/services/{name}/release", summary="Set a group member's Weight/TrafficState")
    async def release(name: str, request: Request) -> dict[str, str]:
        return control.release(name, await _any_json(request))

    @api.get("/groups", summary="List service groups")
    async def list_groups() -> list[dict[str, Any]]:
        return control.list_groups()

    @api.get("/groups/{name}", summary="Describe a service group and its members")
    async def describe_group(name: str) -> dict[str, Any]:
        return control.describe_group(name)

    @api.put("/groups/{name}", summary="Set a service group's TrafficMode")
    async def update_group(name: str, request: Request) -> dict[str, Any]:
        return control.update_group(name, await _any_json(request))

    @api.get("/resources", summary="Resource groups and their use")
    async def resources() -> list[dict[str, Any]]:
        return control.resources()

    app.include_router(api)
    console.mount(app)
    gateway_auth = _gateway_auth(gateway_token, authenticate)
    if feed is not None:
        _route_watch(app, feed, gateway_auth)
    if traffic is not None:
        _traffic(app, traffic, gateway_auth)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            FieldError(".".join(str(p) for p in e["loc"] if p != "body"), e["msg"])
            for e in exc.errors()
        ]
        message = "invalid request: " + "; ".join(str(e) for e in errors)
        return JSONResponse({"code": "BadRequest", "message": message}, status_code=400)

    return app
