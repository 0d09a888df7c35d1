"""The HTTP/REST front end: Triton's v2 API as a raw ASGI application.

Routing is a split of the path and a few comparisons: the infer path is the hot one and
goes through no framework; every other path is looked up in a small route table
(:data:`_ROUTES`).  Every handler decodes, calls the data plane, encodes.  The
infer path is also served through the HTTP server's direct interface
(:class:`~openeas.server.frontends.httpserver.DirectApp`), which answers it with one
pre-formatted byte string instead of ASGI messages.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson
from tritonclient.grpc import model_config_pb2 as mc

from openeas.protocol import compression, http_codec, instance_token
from openeas.protocol.datatypes import config_to_triton
from openeas.protocol.errors import (
    InferenceError,
    InternalError,
    InvalidArgument,
    NotFound,
    Unsupported,
)
from openeas.protocol.types import InferRequest
from openeas.server.dataplane import DataPlane, DecoupledModelError
from openeas.server.frontends.asgi import (
    JSON_HEADERS,
    Receive,
    Scope,
    Send,
    read_body,
    send_error,
    send_json,
    send_response,
    too_large,
)

log = logging.getLogger(__name__)

_JSON_HEAD = b"content-type: application/json\r\n"
_BINARY_HEAD = b"content-type: application/octet-stream\r\ninference-header-content-length: %d\r\n"

#: Triton's answer (501) to an infer request for a model with the decoupled policy.
DECOUPLED_HTTP_INFER = "HTTP end point doesn't support models with decoupled transaction policy"


class MethodNotAllowed(InferenceError):
    http_status = 405


class Forbidden(InferenceError):
    http_status = 403


class HttpFrontend:
    """ASGI app serving ``/v2/...`` over one :class:`DataPlane`."""

    def __init__(
        self,
        dataplane: DataPlane,
        max_input_size: int = 64 * 1024 * 1024,
        internal_token: bytes | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.max_input_size = max_input_size
        #: a platform instance's token (see openeas.protocol.instance_token); None: open
        self.internal_token = internal_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        token = self.internal_token
        if token is not None and not instance_token.carries(scope["headers"], token):
            return await send_error(send, Forbidden(instance_token.REFUSED))
        try:
            path: str = scope["path"]
            if path.endswith("/infer") and scope["method"] == "POST":
                # The hot path: /v2/models/<m>[/versions/<v>]/infer, no general routing.
                parts = path.split("/")
                if len(parts) == 5 and parts[1] == "v2" and parts[2] == "models":
                    return await self._infer(scope, receive, send, parts[3], "")
                if len(parts) == 7 and parts[1] == "v2" and parts[4] == "versions":
                    return await self._infer(scope, receive, send, parts[3], parts[5])
            await self._route(scope, receive, send)
        except InferenceError as exc:
            await send_error(send, exc)
        except Exception as exc:  # never let a bug take the connection down silently
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await send_error(send, InternalError(f"internal error: {type(exc).__name__}: {exc}"))

    def direct(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Coroutine[Any, Any, tuple[int, bytes, bytes]] | None:
        """The infer path, for the HTTP server's direct interface (None: use ASGI)."""
        if method != "POST" or not path.endswith("/infer"):
            return None
        token = self.internal_token
        if token is not None and not instance_token.carries(headers, token):
            return None  # the ASGI path answers the refusal
        parts = path.split("/")
        if len(parts) == 5 and parts[1] == "v2" and parts[2] == "models":
            return self._infer_direct(headers, body, parts[3], "")
        if len(parts) == 7 and parts[1] == "v2" and parts[2] == "models" and parts[4] == "versions":
            return self._infer_direct(headers, body, parts[3], parts[5])
        return None

    async def _infer_direct(
        self, headers: list[tuple[bytes, bytes]], body: bytes, name: str, version: str
    ) -> tuple[int, bytes, bytes]:
        """Run one infer request; errors become their JSON error replies."""
        try:
            if len(body) > self.max_input_size:
                raise too_large(len(body), self.max_input_size)
            encoding = raw_length = accept = None
            for key, value in headers:
                if key == b"inference-header-content-length":
                    raw_length = value
                elif key == b"content-encoding":
                    encoding = value
                elif key == b"accept-encoding":
                    accept = value
            if encoding:
                body = _decompress(body, encoding, self.max_input_size)
            header_length: int | None = None
            if raw_length is not None:
                try:
                    header_length = int(raw_length)
                except ValueError:
                    raise InvalidArgument(
                        "Inference-Header-Content-Length must be an integer"
                    ) from None
            if header_length == 0:
                request = self._raw_request(body, name, version)
            else:
                request = http_codec.decode_request(body, header_length, name, version)
            try:
                response = await self.dataplane.infer(request)
            except DecoupledModelError:
                raise Unsupported(DECOUPLED_HTTP_INFER) from None
            parts, json_length = http_codec.encode_response(response, request)
            payload = parts[0] if len(parts) == 1 else b"".join(parts)
            head = _JSON_HEAD if json_length is None else _BINARY_HEAD % json_length
            if accept:
                payload, used = _compress(payload, accept)
                if used:
                    head += b"content-encoding: %s\r\n" % used
        except InferenceError as exc:
            return exc.http_status, _JSON_HEAD, orjson.dumps({"error": exc.message})
        except Exception as exc:  # never let a bug take the connection down silently
            log.exception("unhandled error on POST /v2/models/%s/infer", name)
            error = InternalError(f"internal error: {type(exc).__name__}: {exc}")
            return error.http_status, _JSON_HEAD, orjson.dumps({"error": error.message})
        return 200, head, payload

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every path but the hot infer one: a lookup in :data:`_ROUTES`."""
        parts = scope["path"].strip("/").split("/")
        if parts[0] != "v2":
            raise NotFound("Not Found")
        found = _find_route(parts[1:])
        if found is None:
            raise NotFound("Not Found")
        handler, params = found
        await handler(self, _Call(scope, receive, send, scope["method"], params))

    # -- the routes' handlers (see _ROUTES); each checks its method ---------------------

    async def _server_metadata(self, call: _Call) -> None:
        _allow(call.method, "GET")
        await send_json(call.send, self.dataplane.server_metadata())

    async def _live(self, call: _Call) -> None:
        _allow(call.method, "GET")
        await send_response(call.send, 200 if self.dataplane.live() else 400)

    async def _ready(self, call: _Call) -> None:
        _allow(call.method, "GET")
        await send_response(call.send, 200 if self.dataplane.ready() else 400)

    async def _all_statistics(self, call: _Call) -> None:
        _allow(call.method, "GET")
        await send_json(call.send, self.dataplane.statistics())

    async def _model_infer(self, call: _Call) -> None:
        """An infer path the hot path did not take (a trailing slash, or a wrong method)."""
        _allow(call.method, "POST")
        await self._infer(call.scope, call.receive, call.send, *_model_of(call))

    async def _model_metadata(self, call: _Call) -> None:
        _allow(call.method, "GET")
        await send_json(call.send, self.dataplane.model_metadata(*_model_of(call)))

    async def _model_ready(self, call: _Call) -> None:
        _allow(call.method, "GET")
        if not self.dataplane.model_ready(*_model_of(call)):
            raise InvalidArgument("Model version not ready")  # Triton's 400 and text
        await send_response(call.send, 200)

    async def _model_config(self, call: _Call) -> None:
        _allow(call.method, "GET")
        await send_json(call.send, self.dataplane.model_config(*_model_of(call)))

    async def _model_statistics(self, call: _Call) -> None:
        _allow(call.method, "GET")
        await send_json(call.send, self.dataplane.statistics(*_model_of(call)))

    async def _model_trace(self, call: _Call) -> None:
        await self._trace(call.receive, call.send, call.method, call.params["model"])

    async def _server_trace(self, call: _Call) -> None:
        await self._trace(call.receive, call.send, call.method, None)

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str
    ) -> None:
        body = await read_body(receive, self.max_input_size)
        status, head, payload = await self._infer_direct(scope["headers"], body, name, version)
        headers = [
            (key, value)
            for key, _, value in (line.partition(b": ") for line in head.split(b"\r\n") if line)
        ]
        await send_response(send, status, payload, headers)

    def _raw_request(self, body: bytes, name: str, version: str) -> InferRequest:
        config = self.dataplane.model_config_proto(name, version)
        if len(config.input) != 1:
            raise InvalidArgument(
                f"raw binary request (Inference-Header-Content-Length: 0) needs a model with "
                f"exactly one input; '{name}' has {len(config.input)}"
            )
        spec = config.input[0]
        return http_codec.raw_request(
            body,
            name,
            version,
            spec.name,
            config_to_triton(mc.DataType.Name(spec.data_type)),
            list(spec.dims),
            config.max_batch_size > 0,
        )

    async def _repository_index(self, call: _Call) -> None:
        _allow(call.method, "POST")
        body = await self._json_body(call.receive)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument("'ready' must be a boolean")
        await send_json(call.send, self.dataplane.repository_index(ready))

    async def _repository_load(self, call: _Call) -> None:
        params = await self._repository_parameters(call)
        await self.dataplane.load_model(call.params["model"], params)
        await send_response(call.send, 200, b"", JSON_HEADERS)

    async def _repository_unload(self, call: _Call) -> None:
        params = await self._repository_parameters(call)
        await self.dataplane.unload_model(call.params["model"], params)
        await send_response(call.send, 200, b"", JSON_HEADERS)

    async def _repository_parameters(self, call: _Call) -> dict[str, Any]:
        """The ``parameters`` of a POSTed load/unload body."""
        _allow(call.method, "POST")
        body = await self._json_body(call.receive)
        params = body.get("parameters", {})
        if not isinstance(params, dict):
            raise InvalidArgument("'parameters' must be a JSON object")
        return params

    async def _logging_route(self, call: _Call) -> None:
        await self._logging(call.receive, call.send, call.method)

    async def _logging(self, receive: Receive, send: Send, method: str) -> None:
        if method == "GET":
            return await send_json(send, self.dataplane.log_settings.get())
        _allow(method, "POST")
        body = await self._json_body(receive)
        return await send_json(send, self.dataplane.log_settings.update(body))

    async def _trace(self, receive: Receive, send: Send, method: str, model: str | None) -> None:
        if model:
            self.dataplane.models.get(model)
        if method == "GET":
            return await send_json(send, self.dataplane.trace_settings.get(model))
        _allow(method, "POST")
        body = await self._json_body(receive)
        return await send_json(send, self.dataplane.trace_settings.update(body, model))

    async def _system_shared_memory(self, call: _Call) -> None:
        await self._shared_memory(call, cuda=False)

    async def _cuda_shared_memory_route(self, call: _Call) -> None:
        await self._shared_memory(call, cuda=True)

    async def _shared_memory(self, call: _Call, cuda: bool) -> None:
        """``/v2/(system|cuda)sharedmemory[/region/<name>]/(status|register|unregister)``."""
        name, action = call.params.get("region", ""), call.params["action"]
        if action not in ("status", "register", "unregister") or (
            "region" in call.params and not name
        ):
            raise NotFound("Not Found")
        self.dataplane.check_shared_memory_allowed()
        send, method = call.send, call.method
        if action == "status":
            _allow(method, "GET")
            if cuda:
                return await send_json(send, self.dataplane.cuda_shm_status(name))
            return await send_json(send, self.dataplane.system_shm_status(name))
        _allow(method, "POST")
        if cuda:
            self._cuda_shared_memory(name, action)
        elif action == "register":
            body = await self._json_body(call.receive)
            self.dataplane.system_shm_register(
                name, body.get("key"), body.get("offset"), body.get("byte_size")
            )
        else:
            self.dataplane.system_shm_unregister(name)
        return await send_response(send, 200, b"", JSON_HEADERS)

    def _cuda_shared_memory(self, name: str, action: str) -> None:
        """CUDA register / unregister (this server has no GPU; Triton's answers)."""
        if action == "unregister":
            self.dataplane.cuda_shm_unregister(name)
        elif not name:
            raise InvalidArgument(
                "'region name' is necessary to register cuda shared memory region"
            )
        else:
            self.dataplane.cuda_shm_register(name)

    async def _json_body(self, receive: Receive) -> dict[str, Any]:
        body = await read_body(receive, self.max_input_size)
        if not body.strip():
            return {}
        doc = http_codec.parse_json(body)
        if not isinstance(doc, dict):
            raise InvalidArgument("the request body must be a JSON object")
        return doc


@dataclass(slots=True)
class _Call:
    """One request on a non-infer route, with the path segments its route captured."""

    scope: Scope
    receive: Receive
    send: Send
    method: str
    params: dict[str, str]


_Handler = Callable[[HttpFrontend, _Call], Awaitable[None]]


def _model_of(call: _Call) -> tuple[str, str]:
    """(model name, version; "" for the latest) of a ``/v2/models/<m>[/versions/<v>]`` route."""
    return call.params["model"], call.params.get("version", "")


def _routes() -> dict[tuple[int, str], list[tuple[tuple[str, ...], _Handler]]]:
    """The non-infer routes: the path segments after ``/v2`` ("{x}" captures one) and
    their handler, indexed by (segment count, first segment); the first match wins."""
    F = HttpFrontend  # noqa: N806 - short, for the table
    table: list[tuple[str, _Handler]] = [
        ("", F._server_metadata),
        ("health/live", F._live),
        ("health/ready", F._ready),
        ("models/stats", F._all_statistics),
        ("repository/index", F._repository_index),
        ("repository/models/{model}/load", F._repository_load),
        ("repository/models/{model}/unload", F._repository_unload),
        ("logging", F._logging_route),
        ("trace/setting", F._server_trace),
    ]
    model_actions: list[tuple[str, _Handler]] = [
        ("", F._model_metadata),
        ("/infer", F._model_infer),
        ("/ready", F._model_ready),
        ("/config", F._model_config),
        ("/stats", F._model_statistics),
        ("/trace/setting", F._model_trace),
    ]
    for model in ("models/{model}", "models/{model}/versions/{version}"):
        table += [(model + suffix, handler) for suffix, handler in model_actions]
    shared_memory: list[tuple[str, _Handler]] = [
        ("systemsharedmemory", F._system_shared_memory),
        ("cudasharedmemory", F._cuda_shared_memory_route),
    ]
    for kind, shm in shared_memory:
        table += [(f"{kind}/{{action}}", shm), (f"{kind}/region/{{region}}/{{action}}", shm)]
    index: dict[tuple[int, str], list[tuple[tuple[str, ...], _Handler]]] = {}
    for path, handler in table:
        pattern = tuple(path.split("/")) if path else ()
        index.setdefault((len(pattern), pattern[0] if pattern else ""), []).append(
            (pattern, handler)
        )
    return index


def _find_route(parts: list[str]) -> tuple[_Handler, dict[str, str]] | None:
    """The handler of the path segments after ``/v2`` and what its pattern captured."""
    for pattern, handler in _ROUTES.get((len(parts), parts[0] if parts else ""), ()):
        params = _captures(pattern, parts)
        if params is not None:
            return handler, params
    return None


def _captures(pattern: tuple[str, ...], parts: list[str]) -> dict[str, str] | None:
    """What ``{name}`` segments capture; every other segment must be equal."""
    params: dict[str, str] = {}
    for want, got in zip(pattern, parts, strict=True):
        if want.startswith("{"):
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params


def _allow(method: str, expected: str) -> None:
    if method != expected:
        raise MethodNotAllowed(f"Method Not Allowed: use {expected}")


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    """Inflate a request body to at most ``limit`` bytes (400 beyond: a bomb never
    inflates further than the limit)."""
    name = encoding.strip().lower()
    if name == b"identity":
        return body
    if not compression.supported(name):
        raise Unsupported(f"unsupported Content-Encoding '{encoding.decode(errors='replace')}'")
    try:
        return compression.inflate(body, name, limit)
    except compression.DecompressedTooLarge:
        raise InvalidArgument(
            f"decompressed request body exceeds the maximum input size of {limit} bytes"
        ) from None
    except compression.DecompressionError as exc:
        raise InvalidArgument(f"failed to decompress the request body: {exc}") from None


def _compress(payload: bytes, accept: bytes) -> tuple[bytes, bytes | None]:
    offered = [p.split(b";")[0].strip().lower() for p in accept.split(b",")]
    if b"gzip" in offered:
        return gzip.compress(payload, compresslevel=6), b"gzip"
    if b"deflate" in offered:
        return zlib.compress(payload), b"deflate"
    return payload, None


_ROUTES = _routes()
