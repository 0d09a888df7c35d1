"""The gRPC front end: Triton's ``inference.GRPCInferenceService``.

It runs in the server's event loop, next to the HTTP front end, on our HTTP/2 transport
(:mod:`openeas.transport.grpc_transport`), and every handler only decodes the message, calls the
:class:`DataPlane` and encodes the answer.  Errors are :class:`InferenceError`
subclasses whose ``grpc_code`` becomes the call's status; anything else is ``INTERNAL``.
The generated messages come from the ``tritonclient`` wheel
(``tritonclient.grpc.service_pb2``); no protos are vendored.  The same server also
answers the standard ``grpc.health.v1.Health`` service (:mod:`.grpc_health`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb

from openeas.protocol import grpc_codec
from openeas.protocol.errors import InferenceError, InvalidArgument, Unsupported
from openeas.server.dataplane import DataPlane, DecoupledModelError
from openeas.server.frontends.grpc_health import HealthServicer
from openeas.server.options import ServerOptions
from openeas.transport.grpc_call import Method, kind_of
from openeas.transport.grpc_transport import GrpcServer
from openeas.transport.http2_peer import Http2Limits
from openeas.transport.sockets import bind_socket, bind_unix_socket, grpc_unix_socket
from openeas.transport.tls import ALPN_H2, TlsFileError, server_context

log = logging.getLogger(__name__)

#: The gRPC service this front end implements.
SERVICE_NAME = "inference.GRPCInferenceService"

#: Triton's answer to ModelInfer for a model with the decoupled transaction policy.
DECOUPLED_MODEL_INFER = "ModelInfer RPC doesn't support models with decoupled transaction policy"
#: Request parameter: send an empty response for a bare final flag, and mark every
#: response with :data:`FINAL_RESPONSE`.
EMPTY_FINAL = "triton_enable_empty_final_response"
#: Response parameter (bool) that tells whether a stream response is its request's last.
FINAL_RESPONSE = "triton_final_response"


def _no_repository_name(name: str) -> None:
    if name:
        raise Unsupported("'repository_name' specification is not supported")


class GrpcInferenceServicer:
    """``inference.GRPCInferenceService`` over one :class:`DataPlane`.

    One coroutine (or async generator, for the stream) per RPC, named as in the
    service; :meth:`methods` maps them to the transport's method table.
    """

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def methods(self) -> dict[bytes, Method]:
        """Every RPC of the service, keyed by its HTTP/2 path."""
        service = pb.DESCRIPTOR.services_by_name[SERVICE_NAME.rpartition(".")[2]]
        table: dict[bytes, Method] = {}
        for rpc in service.methods:
            request_type = getattr(pb, rpc.input_type.name)
            response_type = getattr(pb, rpc.output_type.name)
            table[f"/{SERVICE_NAME}/{rpc.name}".encode()] = Method(
                kind_of(rpc),
                getattr(self, rpc.name),
                request_type.FromString,
                response_type.SerializeToString,
            )
        return table

    # -- health and metadata -----------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=self.dataplane.model_ready(request.name, request.version)
        )

    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        meta = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def ModelMetadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        meta = self.dataplane.model_metadata(request.name, request.version)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(
            config=self.dataplane.model_config_proto(request.name, request.version)
        )

    # -- inference ---------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        infer_request = grpc_codec.decode_request(request)
        try:
            response = await self.dataplane.infer(infer_request)
        except DecoupledModelError:
            raise Unsupported(DECOUPLED_MODEL_INFER) from None
        return grpc_codec.encode_response(response, infer_request)

    async def _stream_one(
        self,
        request: pb.ModelInferRequest,
        put: Callable[[pb.ModelStreamInferResponse], None],
    ) -> None:
        """Run one request of a stream; ``put`` every answer it produces.

        A decoupled model's responses are put as they arrive; with the request parameter
        ``triton_enable_empty_final_response`` each carries ``triton_final_response`` and
        a bare final flag becomes an empty response, otherwise a bare final sends nothing.
        Errors are put as ``error_message`` answers (the stream stays open).
        """
        empty_final = False
        try:
            infer_request = grpc_codec.decode_request(request)
            if EMPTY_FINAL in infer_request.parameters:
                empty_final = _bool_parameter(infer_request.parameters.pop(EMPTY_FINAL))
            async with aclosing(self.dataplane.infer_stream(infer_request)) as responses:
                async for response, final in responses:
                    if response is None:
                        if not empty_final:
                            continue
                        answer = pb.ModelInferResponse(
                            id=request.id,
                            model_name=request.model_name,
                            model_version=request.model_version,
                        )
                        message = pb.ModelStreamInferResponse(infer_response=answer)
                    elif isinstance(response, InferenceError):
                        message = _stream_error(request, response.message)
                    else:
                        message = pb.ModelStreamInferResponse(
                            infer_response=grpc_codec.encode_response(response, infer_request)
                        )
                    if empty_final:
                        final_param = message.infer_response.parameters[FINAL_RESPONSE]
                        final_param.bool_param = final
                    put(message)
            return
        except InferenceError as exc:
            text = exc.message
        except Exception as exc:
            log.exception("unhandled error in gRPC ModelStreamInfer")
            text = f"internal error: {type(exc).__name__}: {exc}"
        message = _stream_error(request, text)
        if empty_final:
            message.infer_response.parameters[FINAL_RESPONSE].bool_param = True
        put(message)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest]
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests of a stream run concurrently; each answer is written when it is ready.

        A failed request answers with ``error_message`` and leaves the stream open.  When
        the client cancels the call (or it ends otherwise), requests still running are
        cancelled: decoupled models see ``request.is_cancelled()``.
        """
        queue: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def answer(request: pb.ModelInferRequest) -> None:
            await self._stream_one(request, queue.put_nowait)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(answer(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                while running:
                    await asyncio.gather(*running, return_exceptions=True)
            finally:
                queue.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await queue.get()) is not None:
                yield item
            await reader  # re-raises a failure of the request stream itself
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    # -- statistics --------------------------------------------------------------------

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest
    ) -> pb.ModelStatisticsResponse:
        stats = self.dataplane.statistics(request.name, request.version)
        # the dict's field names are the proto's; extra keys (newer stats) are skipped
        return json_format.ParseDict(
            stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True
        )

    # -- repository --------------------------------------------------------------------

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest
    ) -> pb.RepositoryIndexResponse:
        _no_repository_name(request.repository_name)
        entries = self.dataplane.repository_index(request.ready)
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[index(**entry) for entry in entries])

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest
    ) -> pb.RepositoryModelLoadResponse:
        _no_repository_name(request.repository_name)
        await self.dataplane.load_model(
            request.model_name, grpc_codec.decode_parameters(request.parameters)
        )
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest
    ) -> pb.RepositoryModelUnloadResponse:
        _no_repository_name(request.repository_name)
        await self.dataplane.unload_model(
            request.model_name, grpc_codec.decode_parameters(request.parameters)
        )
        return pb.RepositoryModelUnloadResponse()

    # -- shared memory -----------------------------------------------------------------

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest
    ) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self.dataplane.system_shm_status(request.name):
            response.regions[region["name"]].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(**region)
            )
        return response

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.dataplane.system_shm_register(
            request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.dataplane.system_shm_unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest
    ) -> pb.CudaSharedMemoryStatusResponse:
        self.dataplane.cuda_shm_status(request.name)  # no GPU: empty, or not found
        return pb.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest
    ) -> pb.CudaSharedMemoryRegisterResponse:
        self.dataplane.cuda_shm_register(request.name)
        return pb.CudaSharedMemoryRegisterResponse()

    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        self.dataplane.cuda_shm_unregister(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    # -- settings ----------------------------------------------------------------------

    async def TraceSetting(self, request: pb.TraceSettingRequest) -> pb.TraceSettingResponse:
        model = request.model_name or None
        if model:
            self.dataplane.models.get(model)
        settings = self.dataplane.trace_settings
        if request.settings:
            changes: dict[str, Any] = {}
            for key, setting in request.settings.items():
                values = list(setting.value)
                if not values:
                    changes[key] = None  # clear: back to the global (or default) value
                elif key == "trace_level":
                    changes[key] = values
                elif len(values) == 1:
                    changes[key] = values[0]
                else:
                    raise InvalidArgument(f"trace setting '{key}' takes a single value")
            current = settings.update(changes, model)
        else:
            current = settings.get(model)
        response = pb.TraceSettingResponse()
        for key, value in current.items():
            values = value if isinstance(value, list) else [value]
            response.settings[key].value.extend(str(v) for v in values)
        return response

    async def LogSettings(self, request: pb.LogSettingsRequest) -> pb.LogSettingsResponse:
        settings = self.dataplane.log_settings
        if request.settings:
            changes: dict[str, Any] = {}
            for key, setting in request.settings.items():
                kind = setting.WhichOneof("parameter_choice")
                if kind is None:
                    raise InvalidArgument(f"log setting '{key}' has no value set")
                changes[key] = getattr(setting, kind)
            current = settings.update(changes)
        else:
            current = settings.get()
        response = pb.LogSettingsResponse()
        for key, value in current.items():
            entry = response.settings[key]
            if isinstance(value, bool):
                entry.bool_param = value
            elif isinstance(value, int):
                entry.uint32_param = value
            else:
                entry.string_param = str(value)
        return response


def _stream_error(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    """A stream answer that reports ``message`` for ``request`` (its id tells which)."""
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(
            id=request.id, model_name=request.model_name, model_version=request.model_version
        ),
    )


def _bool_parameter(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


class GrpcFrontend:
    """The gRPC server for :class:`GrpcInferenceServicer` and the health service."""

    def __init__(
        self, dataplane: DataPlane, options: ServerOptions, internal_token: bytes | None = None
    ) -> None:
        self.dataplane = dataplane
        self.options = options
        self.servicer = GrpcInferenceServicer(dataplane)
        methods = self.servicer.methods()
        methods.update(HealthServicer(lambda: dataplane.ready()).methods())
        self._server = GrpcServer(
            methods,
            max_message_size=options.grpc_max_message_size,
            limits=http2_limits(options),
            internal_token=internal_token,
        )
        self._port = 0

    @property
    def port(self) -> int:
        """The bound port (the real one when ``grpc_port`` was 0); 0 before start()."""
        return self._port

    async def start(self) -> None:
        """Bind ``grpc_address:grpc_port`` and start serving; OSError when it cannot bind."""
        tls = tls_context(self.options) if self.options.grpc_use_ssl else None
        sock = bind_socket(self.options.grpc_address, self.options.grpc_port)
        self._port = sock.getsockname()[1]
        await self._server.start(sock, tls)
        if self.options.http_unix_socket:  # the local gateway's way in (no TLS: local)
            unix = bind_unix_socket(grpc_unix_socket(self.options.http_unix_socket))
            await self._server.start(unix)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls; in-flight calls get ``grace`` seconds to finish."""
        await self._server.stop(grace)
        name = self.options.http_unix_socket
        if name and not name.startswith("@"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(grpc_unix_socket(name))


def http2_limits(options: ServerOptions) -> Http2Limits:
    """The gRPC port's HTTP/2 limits from the server's flags."""
    return Http2Limits(
        max_concurrent_streams=options.grpc_max_concurrent_streams,
        max_header_list_size=options.grpc_max_header_list_size,
        max_ping_strikes=options.grpc_http2_max_ping_strikes,
        min_ping_interval_s=options.grpc_http2_min_recv_ping_interval_without_data / 1000.0,
        ping_without_calls=options.grpc_keepalive_permit_without_calls,
    )


def tls_context(options: ServerOptions) -> ssl.SSLContext:
    """The server's TLS settings from the ``--grpc-*ssl*`` flags (HTTP/2 by ALPN).

    OSError names the flag and the file that cannot be read or does not hold what it
    should.
    """
    try:
        return server_context(
            options.grpc_server_cert,
            options.grpc_server_key,
            [ALPN_H2],
            client_ca=options.grpc_root_cert if options.grpc_use_ssl_mutual else None,
        )
    except TlsFileError as exc:
        flags = (
            "--grpc-root-cert"
            if exc.what == "client_ca"
            else "--grpc-server-cert, --grpc-server-key"
        )
        raise OSError(f"gRPC TLS ({flags}): {exc}") from None
